"""Search: ``derd-search --dataset digits`` (or ``python tuning/search.py --dataset digits``).

Ray Tune schedules the trials (one trial = one run of a method), Optuna proposes the
method, structure and loss weights (multi-objective, feasibility-constrained, the paper's
presets first), MO-ASHA stops poor trials early, and MLflow records every trial from the
driver. Everything lands in ``--out`` (default ``runs/<name>``; ``tuning.records.SearchFolder``):
``search.json`` (the search's record: name, dataset, sessions, the driver's Ray processes),
``space.yaml`` (the space used), ``optuna.db`` (the study: every trial's parameters, state and
per-epoch scores), ``mlflow.db`` and ``mlartifacts/``, ``trials/<number>/run.pt`` (each
trial's resumable state), ``stage1_cache/`` (shared stage-I states) and ``tune/`` (Ray's
session folders).

``--resume`` continues the search in ``--out`` from the folder alone: finished trials stay,
trials that were running continue from their checkpoints under their own number, ASHA's
rungs are rebuilt from the stored scores, and the search takes its name, dataset and space
from the folder. A driver killed with ``kill -9`` resumes the same way. ``--resume
--num-trials N`` extends a search to N trials in all (the same study samples the new ones);
the settings in ``RESUME_SETTINGS`` may change on resume, every other flag that shapes the
search is refused with the reason (``RESUME_FIXED``), and so is a folder it cannot continue
(``tuning.checks.check_resumable``: a missing or damaged study or store, a record and space that
disagree, fewer trials than already ran); a running trial's unreadable checkpoint is set aside
with a warning and that trial restarts from its start.

The command joins three parts, each in its own module: planning (``tuning.plan``: flags to a checked
``Plan``, nothing written), the run (``tuning.fit``: Ray, the Tuner and its callbacks) and the parent
run in MLflow (``tuning.parent``).
"""

from __future__ import annotations

import os
import sys
from typing import Any, Callable

from derd.errors import cli_errors
from tuning import processes
from tuning.plan import LOCAL, Plan, build_parser, plan_search
from tuning.store import ui_instructions

EXIT_INTERRUPTED = 130


def run_search(
    argv: list[str] | None = None,
    trainable: Callable[..., None] | None = None,
    trainable_params: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Plan, then run (or resume) the search; returns a summary dict. Raises UserError on bad input.

    ``trainable`` replaces the trial (``tuning.trainable.derd_trainable``, called with the same
    keyword arguments plus ``trainable_params``): the simulator's faithfulness test runs the real
    search over a stand-in that reports the tabulated benchmark's curves
    (``tuning.tabular.table_trainable``)."""
    plan = plan_search(build_parser().parse_args(argv))
    print(f"search {plan.name}: results in {plan.out}", flush=True)
    if plan.resume:
        recorded = {int(p): t for p, t in plan.record.get("ray_processes", {}).items()}
        processes.end_processes({**recorded, **processes.marked(plan.record.get("ray_mark", ""))})
    _loopback_only(plan)
    # imports Ray: only now, once _loopback_only has set what Ray reads on import
    from tuning.fit import run_plan

    return run_plan(plan, trainable, trainable_params)


def _loopback_only(plan: Plan) -> None:
    """A local search's own Ray instance listens on 127.0.0.1 only: Ray uses the loopback address as
    its node's address (and every server binds to it) when its multi-machine mode is off, which
    ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` does on any platform. Ray reads it when first imported,
    so this runs before that; a joined cluster (``--address``) is left as it is."""
    if plan.address in LOCAL and "ray" not in sys.modules:
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


@cli_errors
def main(argv: list[str] | None = None) -> None:
    """``derd-search``: run the search, print its summary and how to open it in MLflow's UI."""
    summary = run_search(argv)
    print()
    print(summary["markdown"])
    print(f"Results in {summary['out']}")
    print(
        "\n".join(
            ui_instructions(summary["tracking_uri"], summary["experiment_id"], summary["parent_run_id"])
        )
    )
    if summary["interrupted"]:
        print(
            f"search interrupted; continue it with: python tuning/search.py --out {summary['out']} --resume",
            file=sys.stderr,
        )
        raise SystemExit(EXIT_INTERRUPTED)


if __name__ == "__main__":
    main()
