"""Several trials on one device at once: total throughput against one alone (prints figures only).

    python benchmarks/bench_packing.py [--processes 1 2 4] [--setting cifar] [--batch 128] [--seconds 30]

Starts N processes side by side, each timing the stage-II step of ``bench_step.py``'s setting
for a fixed wall time on the same device, and prints each N's images per second in total and
per process, and the ratio to one process alone: what ``gpus_per_trial`` below 1 would buy.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def worker(
    setting: str, batch: int, device: str, precision: str, seconds: float, threads: int, start, queue
) -> None:
    import torch

    sys.path.insert(0, str(REPO / "benchmarks"))
    from bench_step import build, iterate

    from derd.device import synchronize

    torch.set_num_threads(threads)
    run = build(setting, batch, torch.device(device), precision, "derd", False)
    index = len(run.phases) - 1
    run.enter_phase(index)
    iterate(run, index, 2)
    synchronize(run.device)
    start.wait()  # every process starts timing together
    images, began = 0, time.perf_counter()
    while time.perf_counter() - began < seconds:
        iterate(run, index, 1, start=images)
        synchronize(run.device)
        images += batch
    queue.put(images / (time.perf_counter() - began))


def main() -> None:
    import torch

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--processes", nargs="+", type=int, default=[1, 2, 4])
    p.add_argument("--setting", default="cifar", choices=["digits", "cifar", "imagenet100"])
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--precision", default="bf16", choices=["fp32", "bf16"])
    p.add_argument("--seconds", type=float, default=30.0)
    args = p.parse_args()
    ctx = mp.get_context("spawn")
    print(
        f"torch {torch.__version__}, device {args.device}, setting {args.setting}, batch {args.batch}, {args.precision}"
    )
    print("| processes | img/s total | img/s per process | total vs one |\n|---|---|---|---|")
    alone = None
    for n in args.processes:
        start, queue = ctx.Barrier(n), ctx.Queue()
        threads = max(1, (os.cpu_count() or 1) // n) if args.device == "cpu" else 1
        procs = [
            ctx.Process(
                target=worker,
                args=(
                    args.setting,
                    args.batch,
                    args.device,
                    args.precision,
                    args.seconds,
                    threads,
                    start,
                    queue,
                ),
            )
            for _ in range(n)
        ]
        for proc in procs:
            proc.start()
        rates = [queue.get() for _ in procs]
        for proc in procs:
            proc.join()
        total = sum(rates)
        alone = alone or total
        print(f"| {n} | {total:,.1f} | {total / n:,.1f} | {total / alone:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
