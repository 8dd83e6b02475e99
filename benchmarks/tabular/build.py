"""Build the tabulated digits benchmark: configurations of the default digits space, each trained
through the real run loop at the space's trial budget, with its whole learning curve.

    python benchmarks/tabular/build.py [--shard i/k] [--groups 100] [--seed-groups 15] [--threads 1]

What it evaluates (deterministic, so any session extends the same table):

* the space's presets (DERD and DERD w/o T_nat at the paper's weights), at seeds 0, 1 and 2;
* ``--groups`` stage-I groups: the stage-I keys (``stage1.*``) are a scrambled Sobol sequence
  over the space's ranges (log scale for log-uniform keys), the method alternates between the
  space's two methods (balanced), and each group holds two configurations whose stage-II keys
  (``stage2.*``) are two points of a second Sobol sequence. The two share the stage-I run (the
  run loop's stage-I cache, exact keys), which both saves an eighth of the table's compute and
  puts pairs in the table that differ only in stage II;
* the first ``--seed-groups`` groups again at seeds 1 and 2 (2 x 15 = 30 configurations at
  three seeds: the table's noise floor), built first, right after the seed-0 presets.

Every row holds the configuration's keys and stage-I keys, the val curve under the ``search``
protocol at each evaluation epoch (clean, PGD_S, AA = APGD-CE + APGD-T), the compute seconds of
every epoch and evaluation (a stage I restored from the cache keeps the seconds it took when it
ran), and what made it (commit, torch, machine, threads). Rows are appended to
``benchmarks/tabular/digits.jsonl`` under a file lock, one line each: an interrupted build loses at
most the group it was running, a rerun skips every row already there, and ``--shard i/k`` builds
every k-th group so that k processes (or machines sharing the file) split the work.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from derd.config import apply_overrides  # noqa: E402
from tuning.space import SearchSpace, default_space_path  # noqa: E402
from tuning.tabular import ROW_FORMAT, TABLE, read_rows, unit_to_value  # noqa: E402

SEEDS = (0, 1, 2)


def plan_rows(space: SearchSpace, groups: int, seed_groups: int) -> list[list[dict[str, Any]]]:
    """The table's work as units that share one stage-I run (same stage-I keys, method and seed)."""
    from scipy.stats import qmc

    methods = space.methods
    stage1 = [p for p in space.params if p.key.startswith("stage1.")]
    stage2 = [p for p in space.params if p.key.startswith("stage2.")]
    n = 2 ** math.ceil(
        math.log2(2 * max(groups, 1))
    )  # a power of two (Sobol's balance); the table takes a prefix
    s1 = qmc.Sobol(len(stage1), scramble=True, seed=1).random(n)
    s2 = qmc.Sobol(len(stage2), scramble=True, seed=2).random(n)

    def presets(seed: int) -> list[list[dict[str, Any]]]:
        return [
            [
                {
                    "id": f"preset-{p['method']}-s{seed}",
                    "group": f"preset-{p['method']}",
                    "seed": seed,
                    "preset": True,
                    "keys": dict(p),
                }
            ]
            for p in space.presets
        ]

    def group(g: int, seed: int) -> list[dict[str, Any]]:
        method = methods[g % len(methods)]
        shared = {p.key: unit_to_value(p, u) for p, u in zip(stage1, s1[g])}
        return [
            {
                "id": f"g{g:03d}-{j}-s{seed}",
                "group": f"g{g:03d}",
                "seed": seed,
                "preset": False,
                "keys": {
                    "method": method,
                    **shared,
                    **{p.key: unit_to_value(p, u) for p, u in zip(stage2, s2[2 * g + j])},
                },
            }
            for j in range(2)
        ]

    # the noise floor's groups at every seed first, so that a partial table already has it
    repeated = min(seed_groups, groups)
    units = presets(0) + [group(g, seed) for g in range(repeated) for seed in SEEDS]
    units += [group(g, 0) for g in range(repeated, groups)] + presets(1) + presets(2)
    return units


def provenance(threads: int) -> dict[str, Any]:
    try:
        commit = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    import torch

    return {
        "commit": commit,
        "torch": torch.__version__,
        "machine": f"{platform.machine()} {platform.processor() or ''} {os.cpu_count()} CPUs".replace(
            "  ", " "
        ),
        "threads": threads,
    }


def run_row(
    space: SearchSpace, row: dict[str, Any], experts, cache: Path, made: dict[str, Any], threshold: float
) -> dict[str, Any]:
    """Train one configuration at the space's trial budget; its row of the table."""
    from derd.run import DistillationRun

    cfg = apply_overrides(space.base_config(), {**row["keys"], "seed": row["seed"]})
    run = DistillationRun(cfg, experts, stage1_cache=cache)
    start = time.time()
    epochs = []
    for result in run.epochs():
        epochs.append(
            {
                "epoch": result["epoch"],
                "stage": result["stage"],
                "cached": bool(result.get("cached")),
                "epoch_s": round(result["time/epoch_s"], 4),
                "eval_s": round(result.get("time/eval_s", 0.0), 4),
                **(
                    {
                        k.removeprefix("val/"): v
                        for k, v in result.items()
                        if k in ("val/clean_acc", "val/pgd_acc", "val/aa_acc")
                    }
                ),
            }
        )
    run.close()
    stage1 = {k: v for k, v in row["keys"].items() if k.startswith("stage1.")}
    return {
        "format": ROW_FORMAT,
        **row,
        "method": row["keys"]["method"],
        "stage1_keys": stage1,
        "total_epochs": run.total_epochs,
        "warmup_epochs": run.warmup_epochs,
        "n_val": len(run.val_loader.dataset),
        "clean_threshold": threshold,
        "epochs": epochs,
        "wall_s": round(time.time() - start, 2),
        "made": made,
    }


def append_row(path: Path, row: dict[str, Any]) -> None:
    """One line, written whole under an exclusive lock (shards share the file)."""
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.write(json.dumps(row, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())
        fcntl.flock(f, fcntl.LOCK_UN)


def natural_threshold(space: SearchSpace, experts) -> float:
    """The search's feasibility threshold for these teachers (``tuning.checks.teacher_preflight``)."""
    from types import SimpleNamespace

    from derd.config import to_dict
    from tuning.checks import teacher_preflight

    plan = SimpleNamespace(base_config=to_dict(space.base_config()), experts=experts, space=space)
    return teacher_preflight(plan)[1]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--shard", default="0/1", help="i/k: build every k-th unit starting at i (default 0/1: all)"
    )
    p.add_argument(
        "--groups", type=int, default=100, help="stage-I groups at seed 0 (two configurations each)"
    )
    p.add_argument("--seed-groups", type=int, default=15, help="groups repeated at seeds 1 and 2")
    p.add_argument("--threads", type=int, default=1, help="torch threads per process")
    p.add_argument("--table", default=str(TABLE))
    p.add_argument("--cache", default=str(REPO / "runs" / "tabular-stage1-cache"))
    p.add_argument("--limit", type=int, help="stop after this many units (a smoke run)")
    args = p.parse_args(argv)
    i, _, k = args.shard.partition("/")
    if not (i.isdigit() and k.isdigit() and 0 <= int(i) < int(k)):
        p.error(f"--shard {args.shard!r}: expected i/k with 0 <= i < k")
    shard, shards = int(i), int(k)
    import torch

    torch.set_num_threads(args.threads)
    from derd.experts import load_experts

    space = SearchSpace.from_yaml(default_space_path("digits"))
    experts = load_experts(space.base_config(), progress=False, methods=space.methods)
    threshold = natural_threshold(space, experts)
    table, cache = Path(args.table), Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    made = provenance(args.threads)
    units = plan_rows(space, args.groups, args.seed_groups)
    mine = [u for n, u in enumerate(units) if n % shards == shard]
    done_units = 0
    for unit in mine:
        have = {r["id"] for r in read_rows(table)} if table.is_file() else set()
        todo = [r for r in unit if r["id"] not in have]
        for row in todo:
            result = run_row(space, row, experts, cache, made, threshold)
            append_row(table, result)
            final = result["epochs"][-1]
            print(
                f"{row['id']} {row['keys']['method']}: clean {final.get('clean_acc', float('nan')):.2f} "
                f"AA {final.get('aa_acc', float('nan')):.2f} in {result['wall_s']:.0f} s",
                flush=True,
            )
        done_units += bool(todo)
        if args.limit is not None and done_units >= args.limit:
            break


if __name__ == "__main__":
    main()
