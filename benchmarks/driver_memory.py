"""Does the search driver's own memory grow with the trials it has finished? (prints, asserts nothing)

    python benchmarks/driver_memory.py [--concurrent 100] [--between 60 180]

Drives ``bench_scale.drive``'s real driver objects (searcher over the cached study, MO-ASHA, the MLflow
logger, on a search folder's SQLite stores) and diffs ``tracemalloc`` snapshots taken at two counts of
finished trials, with the running set full in between: what this project's objects keep per finished
trial. Ray Tune's controller is not in it (no trial runs; see ``bench_scale``), so a growth a soak
shows beyond this is Tune's (``docs/reliability.md``).
"""

from __future__ import annotations

import argparse
import gc
import sys
import tempfile
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_scale  # noqa: E402

from tuning.mlflow_logger import MLflowSearchLogger  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--concurrent", type=int, default=100, help="trials at once (2x in all)")
    p.add_argument("--between", type=int, nargs=2, default=[60, 180], help="finished-trial counts to compare")
    p.add_argument("--top", type=int, default=8, help="allocation sites to print")
    args = p.parse_args(argv)
    first, last = args.between
    if not 0 < first < last <= 2 * args.concurrent:
        p.error(f"--between needs 0 < first < last <= {2 * args.concurrent} (2 x --concurrent)")
    finished, snaps = [0], {}
    complete = MLflowSearchLogger.on_trial_complete

    def counted(self, *a, **k):
        out = complete(self, *a, **k)
        finished[0] += 1
        if finished[0] in (first, last):
            gc.collect()
            snaps[finished[0]] = tracemalloc.take_snapshot()
        return out

    MLflowSearchLogger.on_trial_complete = counted
    tracemalloc.start(8)
    bench_scale.drive(args.concurrent, Path(tempfile.mkdtemp(prefix="driver-memory-")), 10.3)
    diff = snaps[last].compare_to(snaps[first], "traceback")
    total = sum(d.size_diff for d in diff)
    n = last - first
    print(
        f"driver objects, {args.concurrent} concurrent: {total / 1e6:+.2f} MB over trials {first} to {last} finished "
        f"({total / n / 1e3:+.1f} KB per finished trial)"
    )
    for d in diff[: args.top]:
        print(f"{d.size_diff / 1e3:+9.1f} KB  {d.count_diff:+6d} blocks  {d.traceback.format()[-2].strip()}")


if __name__ == "__main__":
    main()
