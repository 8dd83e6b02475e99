"""Throughput of one training iteration, against the device's peak (prints figures, asserts nothing).

    python benchmarks/bench_step.py [--iters 5] [--device cpu|cuda] [--peak-tflops 790] [--batches 128 256 512]
                                    [--settings digits cifar imagenet100] [--method derd] [--compile]

For each setting, batch size and precision (fp32; bf16 autocast + channels_last on CUDA,
bf16 autocast on CPU), it builds the real ``DistillationRun`` (the path ``derd.train`` and
the trainable use, with ``train.precision`` / ``train.channels_last`` set) and times the
method's iterations, then prints:

* pseudo images per second for stage I (DERD's warm-up) and stage II;
* FLOPs of one stage-II iteration per pseudo image, counted by ``torch.utils.flop_counter``
  on the whole iteration (forward and backward of every model, PGD included), the achieved
  TFLOP/s and the percent of ``--peak-tflops`` (the H100's dense bf16 peak is about 790);
* host reads per stage-II iteration, counted with the profiler: ``aten::_local_scalar_dense``
  outside the optimisers' steps (their counters are host tensors by design) and, on CUDA,
  ``cudaStreamSynchronize`` / ``cudaDeviceSynchronize`` calls.

Settings: ``digits`` (digits_cnn_small student, digits_cnn teachers), ``cifar`` (ResNet-18
student, WRN-34-10 teachers, 32 px), ``imagenet100`` (torchvision ResNet-18 student,
ResNet-50 teachers, 224 px). Teachers are randomly initialised (speed does not depend on
their weights).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402
from torch.utils.flop_counter import flop_registry  # noqa: E402

from derd.config import apply_overrides, preset  # noqa: E402
from derd.data import dataset_info  # noqa: E402
from derd.device import synchronize  # noqa: E402
from derd.experts import Experts  # noqa: E402
from derd.models import create_model  # noqa: E402
from derd.run import DistillationRun  # noqa: E402

SETTINGS = {  # name -> dataset, student, teacher, CPU batch sizes
    "digits": ("digits", "digits_cnn_small", "digits_cnn", [128]),
    "cifar": ("cifar10", "resnet18", "wrn_34_10", [16]),
    "imagenet100": ("imagenet100", "tv_resnet18", "tv_resnet50", [4]),
}
SYNC_EVENTS = ("cudaStreamSynchronize", "cudaDeviceSynchronize")


def build(
    setting: str, batch: int, device: torch.device, precision: str, method: str, compile: bool
) -> DistillationRun:
    dataset, student, teacher, _ = SETTINGS[setting]
    info = dataset_info(dataset)

    def make():
        return (
            create_model(
                teacher,
                info.num_classes,
                in_channels=info.image_shape[0],
                mean=info.mean,
                std=info.std,
            )
            .eval()
            .requires_grad_(False)
        )

    cfg = apply_overrides(
        preset(dataset, method),
        {
            "student.arch": student,
            "budget.batch_size": batch,
            "train.precision": precision,
            "train.channels_last": "auto" if precision == "bf16" else "off",
            "train.compile": "on" if compile else "off",
            "cmi.synthesis_steps": 20,
        },
    )
    val = torch.utils.data.TensorDataset(torch.rand(2, *info.image_shape), torch.zeros(2, dtype=torch.long))
    return DistillationRun(cfg, Experts(make(), make()), device=device, val_data=val)


def iterate(run: DistillationRun, index: int, n: int, start: int = 0) -> None:
    phase = run.phases[index]
    for step in range(start, start + n):
        with run.compute.autocast():
            run.method.iteration(phase, step)


def device_name(device: torch.device) -> str:
    """The device as the figures' header names it (the GPU's model, or the CPU's thread count)."""
    return (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"CPU, {torch.get_num_threads()} threads"
    )


def time_phase(run: DistillationRun, index: int, iters: int) -> float:
    """Pseudo images per second of the phase's iterations, after warm-up iterations (two; compiled:
    four, so that every graph of the phase, its recompilations included, is built first)."""
    run.enter_phase(index)
    run.method.start_epoch(run.phases[index])
    warmup = 4 if run.compute.compile else 2
    iterate(run, index, warmup)
    synchronize(run.device)
    start = time.perf_counter()
    iterate(run, index, iters, start=warmup)
    synchronize(run.device)
    return iters * run.phases[index].batch_size / (time.perf_counter() - start)


class _FlopCounter(TorchDispatchMode):
    """torch.utils.flop_counter's per-op formulas without its module tracker (whose backward hooks
    do not support the ``autograd.grad`` calls of PGD and SGA)."""

    def __init__(self) -> None:
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        count = flop_registry.get(func._overloadpacket)
        if count is not None:
            self.total += count(*args, **kwargs, out_val=out)
        return out


def flops_per_image(run: DistillationRun, index: int) -> float:
    counter = _FlopCounter()
    with counter:
        iterate(run, index, 1, start=100)
    return counter.total / run.phases[index].batch_size


def host_reads(run: DistillationRun, index: int) -> tuple[int, int]:
    """(host reads of tensor values outside optimiser steps, CUDA synchronisations) per iteration."""
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if run.device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        iterate(run, index, 1, start=200)
        synchronize(run.device)
    reads = 0
    for event in prof.events():
        if event.name == "aten::_local_scalar_dense":
            parent, in_optimizer = event.cpu_parent, False
            while parent is not None:
                in_optimizer |= parent.name.startswith("Optimizer.step")
                parent = parent.cpu_parent
            reads += not in_optimizer
    syncs = sum(1 for e in prof.events() if e.name in SYNC_EVENTS) - (
        1 if run.device.type == "cuda" else 0
    )  # ours
    return reads, max(syncs, 0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument(
        "--peak-tflops", type=float, default=790.0, help="the device's dense bf16 peak (H100: about 790)"
    )
    p.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    p.add_argument(
        "--batches", nargs="+", type=int, help="batch sizes (default: 128 256 512 on CUDA, small on CPU)"
    )
    p.add_argument("--method", default="derd")
    p.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    p.add_argument(
        "--compile", action="store_true", help="train.compile: torch.compile the student and teachers"
    )
    args = p.parse_args()
    device = torch.device(args.device)
    print(
        f"torch {torch.__version__}, {device_name(device)}, method {args.method}{', compiled' if args.compile else ''}"
    )
    print(
        "| setting | batch | precision | stage I img/s | stage II img/s | GFLOP/img (II) | TFLOP/s (II) | % of peak | "
        "host reads/iter | CUDA syncs/iter |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for setting in args.settings:
        batches = args.batches or ([128, 256, 512] if device.type == "cuda" else SETTINGS[setting][3])
        iters = args.iters * 4 if setting == "digits" else args.iters
        for batch in batches:
            for precision in args.precisions:
                run = build(setting, batch, device, precision, args.method, args.compile)
                last = len(run.phases) - 1
                s1 = time_phase(run, 0, iters) if last > 0 else float("nan")
                s2 = time_phase(run, last, iters)
                flops = flops_per_image(run, last)
                reads, syncs = host_reads(run, last)
                achieved = flops * s2 / 1e12
                print(
                    f"| {setting} | {batch} | {run.compute.label} | {s1:,.1f} | {s2:,.1f} | {flops / 1e9:.2f} | "
                    f"{achieved:.2f} | {100 * achieved / args.peak_tflops:.1f} | {reads} | "
                    f"{syncs if device.type == 'cuda' else '-'} |",
                    flush=True,
                )
                run.close()


if __name__ == "__main__":
    main()
