"""Pseudo images per second for one stage-I and one stage-II DERD step (prints figures only).

    python benchmarks/bench_step.py [--iters 5] [--device cpu|cuda]

Settings: the digits CNNs (student digits_cnn_small, teachers digits_cnn) at batch 128, and
a CIFAR-shaped ResNet-18 student with WRN-34-10 teachers at batch 16 (CPU) or 128 (GPU).
On a GPU the CIFAR setting is also timed with bf16 autocast and channels_last.
"""
from __future__ import annotations

import argparse
import contextlib
import time

import torch

from derd.config import apply_overrides, preset
from derd.data import DATASETS
from derd.method import DERDRun, Experts
from derd.models import create_model


def _experts(arch: str, dataset: str) -> Experts:
    info = DATASETS[dataset]
    make = lambda: create_model(arch, info.num_classes, in_channels=info.image_shape[0], mean=info.mean, std=info.std).eval().requires_grad_(False)  # noqa: E731
    return Experts(make(), make())


def time_steps(run: DERDRun, stage: int, iters: int, autocast: bool) -> float:
    run._setup_optimizers(stage)
    ctx = torch.autocast(run.device.type, dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
    sync = torch.cuda.synchronize if run.device.type == "cuda" else (lambda: None)
    with ctx:
        run._iteration(stage)  # warm-up
        sync()
        start = time.perf_counter()
        for _ in range(iters):
            run._iteration(stage)
        sync()
    batch = (run.cfg.stage1 if stage == 1 else run.cfg.stage2).batch_size
    return iters * batch / (time.perf_counter() - start)


def bench(name: str, dataset: str, student: str, teacher: str, batch: int, device: torch.device, iters: int,
          autocast: bool = False, channels_last: bool = False) -> None:
    cfg = apply_overrides(preset(dataset), {"student.arch": student, "stage1.batch_size": batch, "stage2.batch_size": batch})
    val = torch.utils.data.TensorDataset(torch.rand(2, *DATASETS[dataset].image_shape), torch.zeros(2, dtype=torch.long))
    run = DERDRun(cfg, _experts(teacher, dataset), device=device, val_data=val)
    if channels_last:
        for m in (run.student, run.generator, run.experts.natural, run.experts.robust):
            m.to(memory_format=torch.channels_last)
    s1 = time_steps(run, 1, iters, autocast)
    s2 = time_steps(run, 2, iters, autocast)
    flags = ", ".join(f for f, on in (("bf16 autocast", autocast), ("channels_last", channels_last)) if on) or "fp32"
    print(f"{name} [{device}, batch {batch}, {flags}]: stage I {s1:,.1f} img/s, stage II {s2:,.1f} img/s")
    run.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()
    dev = torch.device(args.device)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, device {dev}")
    bench("digits: digits_cnn_small <- digits_cnn", "digits", "digits_cnn_small", "digits_cnn", 128, dev, args.iters * 4)
    batch = 16 if dev.type == "cpu" else 128
    bench("CIFAR: resnet18 <- wrn_34_10", "cifar10", "resnet18", "wrn_34_10", batch, dev, args.iters)
    if dev.type == "cuda":
        bench("CIFAR: resnet18 <- wrn_34_10", "cifar10", "resnet18", "wrn_34_10", batch, dev, args.iters, autocast=True, channels_last=True)


if __name__ == "__main__":
    main()
