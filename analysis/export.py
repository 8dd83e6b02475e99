"""Export chosen trials as run configs that ``python -m derd.train --config`` runs unchanged.

    python analysis/export.py --experiment derd-digits --select knee --out exported/
    python analysis/export.py --experiment derd-digits --select best-robust --min-clean 0.9x --out exported/

``--select``: ``front`` (every trial on the Pareto front), ``knee`` (the front's balanced
trade-off: ``derd.pareto.KNEE_RULE``), ``best-robust`` (highest val value of the robust
objective), ``best-clean``, or a run id. Only eligible trials are chosen (feasible and, unless
``--include-partial``, run at the full trial budget; ``analysis.trials``): a collapsed student
is never exported. ``--min-clean X``, ``--min-robust Y`` and ``--min-worst-robust W`` (the
worst-class val AA; points, ``80``, or a factor of a teacher's score, ``0.9x``: ``analysis.choice``)
keep only the trials that meet them before a named selection chooses, so ``--select best-robust
--min-clean 80`` is the most robust student with at least 80 clean; without ``--min-clean``, the
floor ``tuning/search.py --min-clean`` recorded applies. When no trial meets them: exit 2, naming the closest trial.
Each YAML takes the trial's config (its method, searched keys, data, teachers with their
SHA-256, seed) with the dataset preset's full-length budget (``--budget trial`` keeps the
trial's own), the ``full`` protocol on the test split, and an ``origin`` block: experiment,
run id, val metrics and the protocol they were measured under (name, eps, attacks:
``derd.evaluate.protocol_record``), the selection and the constraint it was chosen under.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from analysis.choice import Constraint, Floors, constraint_of, most_robust
from analysis.pareto import front_of
from analysis.trials import TrialRecord, choosable, robust_objective, search_trials
from derd.config import RunConfig, apply_overrides, migrate, preset, save_yaml, to_flat
from derd.errors import UserError, check_output_folder, cli_errors
from derd.evaluate import VAL_CLEAN, VAL_N
from derd.pareto import KNEE_RULE, knee_point
from derd.validation import val_protocol
from tuning.store import open_experiment

SELECTIONS = ("front", "knee", "best-robust", "best-clean")


# the keys a full-length final training takes from the dataset's preset (DERD's warm-up is a share of the budget)
FULL_LENGTH_KEYS = (
    "budget.epochs",
    "budget.iters_per_epoch",
    "budget.batch_size",
    "stage1.epochs",
    "eval.every",
)


def config_of_run(params: dict[str, str]) -> RunConfig:
    """Rebuild a trial's RunConfig from its MLflow params (the dotted keys its method reads; a search
    run by an earlier version logged some under older names, migrated here)."""
    import yaml

    dataset = params.get("data.dataset", "digits")
    method = params.get("method", params.get("variant", "derd"))
    base = preset(dataset, method)
    known = to_flat(base)

    def value(key: str, text: str) -> Any:
        if text == "None":
            return None
        return text if isinstance(known.get(key), str) else yaml.safe_load(text)

    values = migrate({k: value(k, text) for k, text in params.items()}, reference=base)
    return apply_overrides(base, {k: v for k, v in values.items() if k in known})


def export_config(
    record: TrialRecord,
    experiment: str,
    budget: str,
    teacher_sha256: dict[str, str],
    chosen_by: dict[str, Any] | None = None,
) -> RunConfig:
    """The trial's run config for a final training; ``chosen_by`` (the selection, its constraint) joins
    its ``origin``."""
    cfg = config_of_run(record.params)
    overrides: dict[str, Any] = {"eval.final_protocol": "full"}
    if budget == "full":
        full = to_flat(preset(cfg.data.dataset))
        overrides.update({k: full[k] for k in FULL_LENGTH_KEYS})
    for kind, digest in teacher_sha256.items():
        if getattr(cfg.teachers, kind) is not None:
            overrides[f"teachers.{kind}_sha256"] = digest
    measured = val_protocol(cfg)
    origin = {
        "experiment": experiment,
        "run_id": record.run_id,
        "trial": record.name,
        "budget": budget,
        "val": {k: v for k, v in record.metrics.items() if k.startswith("val/")},
        "val_protocol": measured,
        **(chosen_by or {}),
    }
    return apply_overrides(cfg, {**overrides, "origin": origin})


def pick(
    pool: list[TrialRecord], selection: str, robust_metric: str, include_partial: bool
) -> list[TrialRecord]:
    """The trials a named selection chooses from ``pool`` (a search's choosable trials, constrained)."""
    if selection == "best-robust":
        return [most_robust(pool, robust_metric)]
    if selection == "best-clean":
        return [max(pool, key=lambda r: r.metrics.get(VAL_CLEAN, float("-inf")))]
    front, _ = front_of(pool, include_partial)
    return front if selection == "front" else [front[knee_point([r.objectives for r in front])]]


def select_records(
    client, experiment_id: str, selection: str, include_partial: bool = False, floors: Floors = Floors()
) -> list[tuple[Any, TrialRecord, Constraint | None]]:
    """(parent run, record, the constraint it was chosen under) of each chosen trial. A named selection
    chooses among the trials that meet the search's constraint (``analysis.choice.constraint_of``: the
    floors given, else the search's recorded ``--min-clean``); a run id is exported as named."""
    if floors and selection not in SELECTIONS:
        raise UserError(
            f"--min-clean, --min-robust and --min-worst-robust choose among trials but --select {selection} "
            f"names one; drop them or select one of {', '.join(SELECTIONS)}"
        )
    chosen, misses = [], []
    for parent, objectives, records in search_trials(client, experiment_id):
        if selection not in SELECTIONS:
            chosen += [(parent, r, None) for r in records if r.run_id == selection]
            continue
        pool = choosable(records, include_partial)
        if not pool:
            continue
        robust = robust_objective(objectives)
        constraint = constraint_of(parent, robust, floors)
        if constraint is not None:
            meeting = [r for r in pool if constraint.met_by(r.metrics)]
            if not meeting:
                misses.append((constraint, pool))
                continue
            pool = meeting
        chosen += [(parent, r, constraint) for r in pick(pool, selection, robust, include_partial)]
    if not chosen:
        if selection not in SELECTIONS:
            raise UserError(
                f"--select {selection!r} is neither one of {', '.join(SELECTIONS)} nor the run id of a "
                f"finished trial of this experiment"
            )
        if misses:
            constraint, pool = min(misses, key=lambda m: m[0].shortfall(m[0].closest(m[1]).metrics))
            flags = dict.fromkeys(b.flag for b in constraint.missed(constraint.closest(pool).metrics))
            raise UserError(f"{constraint.miss(pool)}; pass a lower {' or '.join(flags)}")
        raise UserError(
            "the experiment has no feasible trial that ran the full budget to export yet "
            "(--include-partial also considers early-stopped ones)"
        )
    return chosen


@cli_errors
def main(argv: list[str] | None = None) -> list[Path]:
    p = argparse.ArgumentParser(prog="python analysis/export.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--experiment", required=True)
    p.add_argument(
        "--select",
        required=True,
        help=f"{', '.join(SELECTIONS)} or a run id; knee: {KNEE_RULE}. "
        "With --min-clean/--min-robust each chooses among the trials "
        "that meet them",
    )
    p.add_argument(
        "--min-clean",
        metavar="X",
        help="keep only trials with at least this val clean accuracy: points "
        "(80) or a factor of the natural teacher's val clean (0.9x); "
        "default: the search's --min-clean, if it recorded one",
    )
    p.add_argument(
        "--min-robust",
        metavar="Y",
        help="keep only trials with at least this val robust objective (AA): "
        "points (20) or a factor of the robust teacher's val PGD_S (0.5x)",
    )
    p.add_argument(
        "--min-worst-robust",
        metavar="W",
        help="keep only trials with at least this worst-class val AA "
        "(val/worst_aa_acc): points (10) or a factor of the robust "
        "teacher's worst-class val PGD_S (0.5x)",
    )
    p.add_argument("--out", required=True, help="folder for the YAML configs")
    p.add_argument(
        "--budget",
        choices=("full", "trial"),
        default="full",
        help="the preset's full-length budget or the trial's",
    )
    p.add_argument(
        "--include-partial", action="store_true", help="also consider trials the scheduler stopped early"
    )
    p.add_argument(
        "--tracking-uri", help="default: $MLFLOW_TRACKING_URI, else sqlite:///runs/<experiment>/mlflow.db"
    )
    args = p.parse_args(argv)
    floors = Floors.parse(args.min_clean, args.min_robust, args.min_worst_robust)
    out = check_output_folder(args.out)
    client, exp = open_experiment(args.experiment, args.tracking_uri)
    chosen = select_records(client, exp.experiment_id, args.select, args.include_partial, floors)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for parent, record, constraint in chosen:
        sha = {
            k: parent.data.params[f"teachers.{k}_sha256"]
            for k in ("natural", "robust")
            if f"teachers.{k}_sha256" in parent.data.params
        }
        chosen_by = {"select": args.select, **({"constraint": constraint.origin()} if constraint else {})}
        cfg = export_config(record, args.experiment, args.budget, sha, chosen_by)
        path = out / f"{args.experiment}-{record.name}.yaml"
        save_yaml(cfg, path)
        written.append(path)
        val = ", ".join(
            f"{k.removeprefix('val/')} {v:.2f}" for k, v in sorted(cfg.origin["val"].items()) if k != VAL_N
        )
        under = f", chosen under {constraint.describe()}" if constraint else ""
        print(f"{path}  ({record.method}: {val}{under})  train: python -m derd.train --config {path}")
    return written


def command() -> None:
    """``derd-export``, the installed command: ``main`` over the command line with its return value (the
    files written) dropped, because a console script exits with whatever its function returns."""
    main()


if __name__ == "__main__":
    main()
