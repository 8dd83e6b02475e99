"""Does the cheap search protocol rank students like the full one, and what does it save? (prints figures)

    python benchmarks/bench_protocol.py [--students runs/paper-digits/*/seed0/student.pt ...]

Each student checkpoint is scored on the val split twice: the ``search`` protocol (Clean,
PGD_S, standard AutoAttack's APGD-CE then APGD-T) and the ``full`` one (the paper's six
columns, standard AutoAttack). Figures: both AA columns per student, Kendall's tau-b
between the two AA rankings, and the cost ratio (full's seconds over search's). By default
the students are every method's and reference's seed-0 student of
``python analysis/report.py --paper-tables --dataset digits`` (run that first).
"""

from __future__ import annotations

import argparse
import glob
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from derd.checkpoints import load_checkpoint  # noqa: E402
from derd.data import dataset_info, load_split, make_loader  # noqa: E402
from derd.evaluate import evaluate  # noqa: E402


def kendall_tau_b(a: list[float], b: list[float]) -> float:
    """Kendall's tau-b (ties in either ranking accounted for)."""
    concordant = discordant = ties_a = ties_b = 0
    for i in range(len(a)):
        for j in range(i + 1, len(a)):
            da, db = a[i] - a[j], b[i] - b[j]
            if da == 0 and db == 0:
                continue
            if da == 0:
                ties_a += 1
            elif db == 0:
                ties_b += 1
            elif (da > 0) == (db > 0):
                concordant += 1
            else:
                discordant += 1
    denom = ((concordant + discordant + ties_a) * (concordant + discordant + ties_b)) ** 0.5
    return (concordant - discordant) / denom if denom else float("nan")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--students",
        nargs="+",
        default=sorted(glob.glob(str(REPO / "runs" / "paper-digits" / "*" / "seed0" / "student.pt"))),
    )
    p.add_argument("--dataset", default="digits")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()
    if len(args.students) < 2:
        raise SystemExit(
            "no students: run python analysis/report.py --paper-tables --dataset digits first, or pass --students"
        )
    info = dataset_info(args.dataset)
    loader = make_loader(load_split(args.dataset, "val"), 256)
    rows, cost = [], {"search": 0.0, "full": 0.0}
    for path in args.students:
        model, meta = load_checkpoint(path, info)
        model.to(args.device)
        aa = {}
        for protocol in ("search", "full"):
            start = time.perf_counter()
            aa[protocol] = evaluate(model, loader, protocol, eps=info.eps, device=args.device)["aa_acc"]
            cost[protocol] += time.perf_counter() - start
        rows.append((Path(path).parent.parent.name, aa["search"], aa["full"]))
        print(f"{rows[-1][0]}: AA search {aa['search']:.2f}, full {aa['full']:.2f}", flush=True)
    search, full = [r[1] for r in rows], [r[2] for r in rows]
    print(
        f"\n{len(rows)} {args.dataset} students, val split ({len(loader.dataset)} images), device {args.device}"
    )
    print("| student | AA, search protocol (APGD-CE+T) | AA, full protocol (standard AA) |\n|---|---|---|")
    for name, s, f in sorted(rows, key=lambda r: -r[2]):
        print(f"| {name} | {s:.2f} | {f:.2f} |")
    print(
        f"Kendall tau-b between the two AA rankings: {kendall_tau_b(search, full):.3f}; full AA spans "
        f"{min(full):.2f} to {max(full):.2f}; largest gap search - full: {max(s - f for s, f in zip(search, full)):.2f} points"
    )
    print(
        f"cost: search {cost['search']:.0f} s, full {cost['full']:.0f} s for all students: full / search = "
        f"{cost['full'] / cost['search']:.1f}x"
    )


if __name__ == "__main__":
    main()
