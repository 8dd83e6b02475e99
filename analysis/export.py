"""Export chosen trials as run configs that ``python -m derd.train --config`` runs unchanged.

    python analysis/export.py --experiment derd-digits --select knee --out exported/

``--select``: ``front`` (every trial on the Pareto front), ``knee`` (the front's balanced
trade-off), ``best-robust`` (highest val AA), ``best-clean`` (highest val clean accuracy), or
a run id. Each YAML takes the trial's config (its searched weights, data, teachers, seed)
with the dataset preset's full-length budget (``--budget trial`` keeps the trial's own), the
``full`` protocol on the test split, and an ``origin`` block: experiment, run id, val metrics.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

if __name__ == "__main__" and __package__ in (None, ""):
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from analysis.pareto import knee_point, open_experiment, pareto_ranks, search_trials, signed
from derd.config import RunConfig, apply_overrides, preset, save_yaml, to_flat
from derd.errors import UserError, cli_errors

BUDGET_KEYS = ("stage1.epochs", "stage1.iters_per_epoch", "stage1.batch_size", "stage2.epochs",
               "stage2.iters_per_epoch", "stage2.batch_size", "eval.every")
SELECTIONS = ("front", "knee", "best-robust", "best-clean")


def config_of_run(run) -> RunConfig:
    """Rebuild a trial's RunConfig from its MLflow params (the dotted keys)."""
    base = to_flat(preset(run.data.params.get("data.dataset", "digits")))
    values: dict[str, Any] = {}
    import yaml

    for key, text in run.data.params.items():
        if key in base:
            values[key] = None if text == "None" else yaml.safe_load(text) if not isinstance(base[key], str) else text
    return apply_overrides(preset(values.get("data.dataset", "digits")), values)


def export_config(run, experiment: str, budget: str) -> RunConfig:
    cfg = config_of_run(run)
    overrides: dict[str, Any] = {"eval.final_protocol": "full"}
    if budget == "full":
        full = to_flat(preset(cfg.data.dataset))
        overrides.update({k: full[k] for k in BUDGET_KEYS})
    origin = {"experiment": experiment, "run_id": run.info.run_id, "trial_id": run.data.tags.get("derd.trial_id", ""),
              "budget": budget, "val": {k: v for k, v in run.data.metrics.items() if k.startswith("val/")}}
    return apply_overrides(cfg, {**overrides, "origin": origin})


def select_runs(client, experiment_id: str, selection: str) -> list:
    if selection not in SELECTIONS:
        try:
            return [client.get_run(selection)]
        except Exception:  # noqa: BLE001 - MLflow raises its own exception types per store
            raise UserError(f"--select {selection!r} is neither one of {', '.join(SELECTIONS)} nor a run id") from None
    chosen = []
    for _, objectives, trials in search_trials(client, experiment_id):
        if selection == "best-robust":
            metric = next((m for m, _ in objectives if m != "val/clean_acc"), "val/aa_acc")
            chosen.append(max(trials, key=lambda r: r.data.metrics.get(metric, float("-inf"))))
        elif selection == "best-clean":
            chosen.append(max(trials, key=lambda r: r.data.metrics.get("val/clean_acc", float("-inf"))))
        else:
            points = [signed(r, objectives) for r in trials]
            front = [r for r, k in zip(trials, pareto_ranks(points)) if k == 0]
            chosen += front if selection == "front" else [front[knee_point([signed(r, objectives) for r in front])]]
    if not chosen:
        raise UserError("the experiment has no finished trials to export yet")
    return chosen


@cli_errors
def main(argv: list[str] | None = None) -> list[Path]:
    p = argparse.ArgumentParser(prog="python analysis/export.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--experiment", required=True)
    p.add_argument("--select", required=True, help=f"{', '.join(SELECTIONS)} or a run id")
    p.add_argument("--out", required=True, help="folder for the YAML configs")
    p.add_argument("--budget", choices=("full", "trial"), default="full", help="the preset's full-length budget or the trial's")
    p.add_argument("--tracking-uri")
    args = p.parse_args(argv)
    client, exp = open_experiment(args.experiment, args.tracking_uri)
    runs = select_runs(client, exp.experiment_id, args.select)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for run in runs:
        cfg = export_config(run, args.experiment, args.budget)
        path = out / f"{args.experiment}-{run.data.tags.get('derd.trial_id', run.info.run_id[:8])}.yaml"
        save_yaml(cfg, path)
        written.append(path)
        val = ", ".join(f"{k.removeprefix('val/')} {v:.2f}" for k, v in sorted(cfg.origin["val"].items()))
        print(f"{path}  ({val})  train: python -m derd.train --config {path}")
    return written


if __name__ == "__main__":
    main()
