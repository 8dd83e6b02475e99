"""Images per second for each column of the evaluation protocol (prints figures, asserts nothing).

    python benchmarks/bench_eval.py [--n 256] [--device cpu|cuda]

Models: the digits robust teacher (trained and cached on first use) on real val images, and
a CIFAR-shaped ResNet-18 on random images (AA on a robust-looking model is dominated by
the images it cannot break, so the ResNet figure is a lower bound for untrained weights).
"""

from __future__ import annotations

import argparse
import time

import torch

from derd.data import dataset_info, load_split
from derd.evaluate import column_attacks
from derd.models import create_model
from derd.teachers import digits_teachers


def bench(name: str, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float) -> None:
    model.eval()
    fns = column_attacks(eps, seed=0, aa_version="standard", device=x.device)
    fns["aa_fast_acc"] = column_attacks(eps, seed=0, aa_version="fast", device=x.device)["aa_acc"]
    cells = []
    for col, fn in fns.items():
        if x.is_cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        x_adv = fn(model, x, y)
        with torch.no_grad():
            acc = (model(x_adv).argmax(1) == y).float().mean().item() * 100
        if x.is_cuda:
            torch.cuda.synchronize()
        rate = len(x) / (time.perf_counter() - start)
        cells.append(f"{col.removesuffix('_acc')}: {rate:,.0f} img/s ({acc:.1f}%)")
    print(f"{name} [{x.device}, {len(x)} images]: " + "; ".join(cells))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=256)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()
    dev = torch.device(args.device)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, device {dev}")
    info = dataset_info("digits")
    robust = digits_teachers(progress=False)["robust"][0].to(dev)
    x, y = load_split("digits", "val").tensors
    bench("digits robust teacher (digits_cnn)", robust, x[: args.n].to(dev), y[: args.n].to(dev), info.eps)
    torch.manual_seed(0)
    n = min(args.n, 64) if dev.type == "cpu" else args.n
    resnet = create_model("resnet18", 10).to(dev)
    bench(
        "CIFAR-shaped resnet18 (random init)",
        resnet,
        torch.rand(n, 3, 32, 32, device=dev),
        torch.randint(0, 10, (n,), device=dev),
        8 / 255,
    )


if __name__ == "__main__":
    main()
