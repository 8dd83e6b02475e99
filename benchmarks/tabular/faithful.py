"""How faithful the table's answers are on real searches it never saw (prints figures, asserts nothing).

    python benchmarks/tabular/faithful.py SEARCH_FOLDER [...] [--surrogate extra-trees|forest]

For every trial of each search (a ``tuning/search.py`` output folder: ``search.json`` and
``optuna.db``) that reached the last evaluation, its real final val clean and AA are set against
what ``tuning.tabular.TableAnswers`` answers for the same keys: Kendall tau and mean absolute
error, for AA and clean, per search and pooled. Beside them, the ceiling the noise allows: the
mean Kendall tau between the surrogate's noise-free answers for those keys and one noisy draw of
them (``NoiseModel``, 200 draws), i.e. what a surrogate that knew every configuration's mean
exactly would score against one real run, at these keys. ``bench_search_efficiency.py`` prints
the same figures for every search it runs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from benchmarks.tabular.simulate import kendall  # noqa: E402
from tuning.records import SearchFolder  # noqa: E402
from tuning.space import SearchSpace, default_space_path  # noqa: E402
from tuning.tabular import SURROGATES, NoiseModel, TableAnswers, read_rows  # noqa: E402

METRICS = (("aa_acc", 1), ("clean_acc", 0))  # (the table's name, its index in a search's objectives)


def finished_trials(folder: Path) -> list[tuple[dict[str, Any], list[float]]]:
    """[(keys, [val clean, val AA] at the last evaluation)] of a search's trials that reached it (the
    presets left out: the table holds their keys)."""
    import optuna

    files = SearchFolder(folder)
    record = json.loads(files.record.read_text())
    study = optuna.load_study(study_name=record["name"], storage=f"sqlite:///{files.optuna_db}")
    out = []
    for t in study.trials:
        intermediate = t.user_attrs.get("intermediate", {})
        last = max((int(e) for e in intermediate), default=0)
        if (
            t.state.name == "COMPLETE"
            and not t.user_attrs.get("stopped_early")
            and last
            and not t.user_attrs.get("preset")
        ):
            out.append((dict(t.params), list(intermediate[str(last)])))
    return out


def faithfulness(
    trials: list[tuple[dict[str, Any], list[float]]],
    answers: TableAnswers,
    noise: NoiseModel | None = None,
    draws: int = 200,
) -> dict[str, float]:
    """Kendall tau and mean absolute error of the answers against the real values, per metric, and
    (``noise``) the tau a perfect surrogate of the mean would get against one noisy run."""
    answers.reset()
    answered = [answers.row_for(keys) for keys, _ in trials]
    out: dict[str, float] = {"n": len(trials)}
    for name, index in METRICS:
        real = [values[index] for _, values in trials]
        said = [row["epochs"][-1][name] for row in answered]
        out[f"tau {name}"] = kendall(real, said)
        out[f"mae {name}"] = statistics.mean(abs(a - b) for a, b in zip(real, said))
        if noise is not None:
            out[f"ceiling {name}"] = statistics.mean(
                kendall(
                    said, [noise.perturb(row, (k, i))["epochs"][-1][name] for i, row in enumerate(answered)]
                )
                for k in range(draws)
            )
    return out


def line(label: str, figures: dict[str, float]) -> str:
    return (
        f"| {label} | {figures['n']:.0f} | {figures['tau aa_acc']:.3f} | {figures.get('ceiling aa_acc', float('nan')):.3f} "
        f"| {figures['mae aa_acc']:.2f} | {figures['tau clean_acc']:.3f} | "
        f"{figures.get('ceiling clean_acc', float('nan')):.3f} | {figures['mae clean_acc']:.2f} |"
    )


HEADER = (
    "| search | trials | tau AA | noise ceiling AA | MAE AA | tau clean | noise ceiling clean | MAE clean |\n"
    "|---|---|---|---|---|---|---|---|"
)


def report(folders: list[Path], surrogate: str = SURROGATES[0]) -> None:
    """Print the table of figures for ``folders``, and the pooled row."""
    space = SearchSpace.from_yaml(default_space_path("digits"))
    rows = read_rows()
    answers, noise = TableAnswers(rows, space, kind=surrogate), NoiseModel(rows)
    print(f"faithfulness of the table's answers ({surrogate}) on searches it never saw (final val values)")
    print(HEADER)
    pooled = []
    for folder in folders:
        trials = finished_trials(folder)
        pooled += trials
        if len(trials) > 2:
            print(line(folder.name, faithfulness(trials, answers, noise)))
    if len(folders) > 1 and len(pooled) > 2:
        print(line("all, pooled", faithfulness(pooled, answers, noise)))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("folders", nargs="+", type=Path)
    p.add_argument("--surrogate", choices=SURROGATES, default=SURROGATES[0])
    args = p.parse_args()
    report(args.folders, args.surrogate)


if __name__ == "__main__":
    main()
