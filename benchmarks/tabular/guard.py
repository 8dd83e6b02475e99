"""Is the table still today's run loop? Re-run a preset row at HEAD and compare (exit 1: stale).

    python benchmarks/tabular/guard.py [--preset derd_no_nat] [--seed 0] [--threads 1]

The table's rows were made by the run loop of the commits they record. A change to that loop
(a loss, an attack, the evaluation, the data order) makes the simulator answer for code that no
longer runs. This trains one preset (the paper's weights for a method, at the digits trial
budget) at one of the table's seeds through today's run loop, as ``build.py`` made its row, and
compares every val value (clean, PGD_S, AA at every evaluation epoch) with the table:

* ``identical``: the same values as the table's row at that seed (same machine and torch: the
  loop is unchanged);
* ``within noise``: not identical, but every value within 3 standard deviations of the table's
  seed-to-seed noise (``tuning.tabular.NoiseModel``) of the row: another machine or torch, or a
  change that does not move results beyond what a seed does;
* ``stale``: some value further away. The table should be rebuilt (``build.py``) before the
  simulator's figures are trusted. Exit code 1.

About 70 s on 2 CPU cores (one 12-epoch digits trial), so it is a benchmark, not a test; the
verdict logic is tested in ``tests/test_simulator.py``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tuning.tabular import NoiseModel, curve_points, read_rows  # noqa: E402

SIGMAS = 3.0


def verdict(
    table_row: dict[str, Any], fresh_row: dict[str, Any], noise: NoiseModel, sigmas: float = SIGMAS
) -> tuple[str, list[str]]:
    """("identical" | "within noise" | "stale", a line per evaluated value: table, now, difference in sd)."""
    table, now = curve_points(table_row), curve_points(fresh_row)
    z = [abs(b[2] - a[2]) / max(sd, 1e-9) for a, b, sd in zip(table, now, noise.sd)]
    lines = [
        f"epoch {epoch:>2} {c:<9} table {was:6.2f}  now {is_:6.2f}  ({d:.1f} sd)"
        for (epoch, c, was), (_, _, is_), d in zip(table, now, z)
    ]
    same, worst = table == now, max(z, default=0.0)
    return ("identical" if same else "within noise" if worst <= sigmas else "stale"), lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="derd_no_nat", help="the method whose preset row is re-run")
    p.add_argument("--seed", type=int, default=0, help="the table's seed to re-run it at")
    p.add_argument("--threads", type=int, default=1, help="torch threads (the table was built with 1)")
    args = p.parse_args(argv)
    import torch

    from benchmarks.tabular.build import natural_threshold, provenance, run_row
    from derd.experts import load_experts
    from tuning.space import SearchSpace, default_space_path

    torch.set_num_threads(args.threads)
    rows = read_rows()
    wanted = f"preset-{args.preset}-s{args.seed}"
    table_row = next((r for r in rows if r["id"] == wanted), None)
    if table_row is None:
        print(
            f"the table has no row {wanted}; presets: "
            f"{', '.join(sorted({r['id'] for r in rows if r['preset']}))}",
            file=sys.stderr,
        )
        return 2
    space = SearchSpace.from_yaml(default_space_path("digits"))
    experts = load_experts(space.base_config(), progress=False, methods=space.methods)
    threshold = natural_threshold(space, experts)
    unit = {k: table_row[k] for k in ("id", "group", "seed", "preset", "keys")}
    with tempfile.TemporaryDirectory() as cache:
        fresh = run_row(space, unit, experts, Path(cache), provenance(args.threads), threshold)
    result, lines = verdict(table_row, fresh, NoiseModel(rows))
    print(
        f"{wanted}: table made by {table_row['made']['commit']} ({table_row['made']['torch']}, "
        f"{table_row['made']['machine']}); now {fresh['made']['commit']} ({fresh['made']['torch']}, "
        f"{fresh['made']['machine']})"
    )
    print("\n".join(lines))
    print(
        f"verdict: {result}"
        + (" -- rebuild the table (benchmarks/tabular/build.py)" if result == "stale" else "")
    )
    return 1 if result == "stale" else 0


if __name__ == "__main__":
    sys.exit(main())
