"""Export chosen trials as run configs that ``python -m derd.train --config`` runs unchanged.

    python analysis/export.py --experiment derd-digits --select knee --out exported/

``--select``: ``front`` (every trial on the Pareto front), ``knee`` (the front's balanced
trade-off), ``best-robust`` (highest val value of the robust objective), ``best-clean``, or
a run id. Only eligible trials are chosen (feasible and, unless ``--include-partial``, run
at the full trial budget; ``analysis.trials``): a collapsed student is never exported.
Each YAML takes the trial's config (its method, searched keys, data, teachers with their
SHA-256, seed) with the dataset preset's full-length budget (``--budget trial`` keeps the
trial's own), the ``full`` protocol on the test split, and an ``origin`` block: experiment,
run id, val metrics.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

if __name__ == "__main__" and __package__ in (None, ""):
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from analysis.pareto import front_of, knee_point
from analysis.store import open_experiment
from analysis.trials import TrialRecord, search_trials
from derd.config import RunConfig, apply_overrides, migrate, preset, save_yaml, to_flat
from derd.errors import UserError, check_output_folder, cli_errors
from derd.records import VAL_AA, VAL_CLEAN, VAL_N

SELECTIONS = ("front", "knee", "best-robust", "best-clean")


# the keys a full-length final training takes from the dataset's preset (DERD's warm-up is a share of the budget)
FULL_LENGTH_KEYS = ("budget.epochs", "budget.iters_per_epoch", "budget.batch_size", "stage1.epochs", "eval.every")


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


def export_config(record: TrialRecord, experiment: str, budget: str, teacher_sha256: dict[str, str]) -> RunConfig:
    cfg = config_of_run(record.params)
    overrides: dict[str, Any] = {"eval.final_protocol": "full"}
    if budget == "full":
        full = to_flat(preset(cfg.data.dataset))
        overrides.update({k: full[k] for k in FULL_LENGTH_KEYS})
    for kind, digest in teacher_sha256.items():
        if getattr(cfg.teachers, kind) is not None:
            overrides[f"teachers.{kind}_sha256"] = digest
    origin = {"experiment": experiment, "run_id": record.run_id, "trial": record.name, "budget": budget,
              "val": {k: v for k, v in record.metrics.items() if k.startswith("val/")}}
    return apply_overrides(cfg, {**overrides, "origin": origin})


def select_records(client, experiment_id: str, selection: str, include_partial: bool = False) -> list[tuple[Any, TrialRecord]]:
    """(parent run, record) of each chosen trial."""
    chosen = []
    for parent, objectives, records in search_trials(client, experiment_id):
        if selection not in SELECTIONS:
            chosen += [(parent, r) for r in records if r.run_id == selection]
            continue
        front, _ = front_of(records, include_partial)
        pool = [r for r in records if r.feasible and (include_partial or r.full_budget)]
        if not pool:
            continue
        if selection == "best-robust":
            metric = next((m for m, _ in objectives if m != VAL_CLEAN), VAL_AA)
            chosen.append((parent, max(pool, key=lambda r: (r.metrics.get(metric, float("-inf")), r.metrics[VAL_CLEAN]))))
        elif selection == "best-clean":
            chosen.append((parent, max(pool, key=lambda r: r.metrics.get(VAL_CLEAN, float("-inf")))))
        elif selection == "front":
            chosen += [(parent, r) for r in front]
        else:
            chosen.append((parent, front[knee_point([r.objectives for r in front])]))
    if not chosen:
        if selection not in SELECTIONS:
            raise UserError(f"--select {selection!r} is neither one of {', '.join(SELECTIONS)} nor the run id of a "
                            f"finished trial of this experiment")
        raise UserError("the experiment has no feasible trial that ran the full budget to export yet "
                        "(--include-partial also considers early-stopped ones)")
    return chosen


@cli_errors
def main(argv: list[str] | None = None) -> list[Path]:
    p = argparse.ArgumentParser(prog="python analysis/export.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--experiment", required=True)
    p.add_argument("--select", required=True, help=f"{', '.join(SELECTIONS)} or a run id")
    p.add_argument("--out", required=True, help="folder for the YAML configs")
    p.add_argument("--budget", choices=("full", "trial"), default="full", help="the preset's full-length budget or the trial's")
    p.add_argument("--include-partial", action="store_true", help="also consider trials the scheduler stopped early")
    p.add_argument("--tracking-uri", help="default: $MLFLOW_TRACKING_URI, else sqlite:///runs/<experiment>/mlflow.db")
    args = p.parse_args(argv)
    out = check_output_folder(args.out)
    client, exp = open_experiment(args.experiment, args.tracking_uri)
    chosen = select_records(client, exp.experiment_id, args.select, args.include_partial)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for parent, record in chosen:
        sha = {k: parent.data.params[f"teachers.{k}_sha256"] for k in ("natural", "robust")
               if f"teachers.{k}_sha256" in parent.data.params}
        cfg = export_config(record, args.experiment, args.budget, sha)
        path = out / f"{args.experiment}-{record.name}.yaml"
        save_yaml(cfg, path)
        written.append(path)
        val = ", ".join(f"{k.removeprefix('val/')} {v:.2f}" for k, v in sorted(cfg.origin["val"].items()) if k != VAL_N)
        print(f"{path}  ({record.method}: {val})  train: python -m derd.train --config {path}")
    return written


if __name__ == "__main__":
    main()
