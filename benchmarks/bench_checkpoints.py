"""Checkpoint bytes per trial-hour at CIFAR-10 scale, before and after the cadence (prints figures,
asserts nothing).

    python benchmarks/bench_checkpoints.py [--img-per-s 2483] [--eval-s 0]

For derd and derd_no_nat it builds the real ``DistillationRun`` of the CIFAR-10 search space's
trial (ResNet-18 student, the generator, their optimisers after a stage-II step, derd_no_nat's
frozen copy; random teachers and 16 random val images, on the CPU) and measures the bytes of
its ``run.pt``. It then replays one trial of the space's budget (``budget.epochs``, its
iterations and batch, ``eval.every``) on a simulated clock at the H200's compiled CIFAR
stage-II speed (2,483 img/s, PyTorch 2.11; evaluation time ``--eval-s`` per val epoch, 0 by
default, which favours neither policy much) and counts the writes of each policy:

* before (commit 017137f): every epoch, three copies: a temporary folder handed to Tune, the
  trial's own ``run.pt``, and Tune's copy of the temporary folder into its storage path;
* after: one copy, ``derd.cadence.CheckpointCadence`` with the CUDA default
  (``train.checkpoint_every_s`` 300 s, and every val epoch and the end).
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from derd.cadence import CheckpointCadence, checkpoint_every_s  # noqa: E402
from derd.config import RunConfig, apply_overrides  # noqa: E402
from derd.data import dataset_info  # noqa: E402
from derd.experts import Experts  # noqa: E402
from derd.methods import total_epochs  # noqa: E402
from derd.models import create_model  # noqa: E402
from derd.run import DistillationRun  # noqa: E402
from tuning.space import SearchSpace, default_space_path  # noqa: E402

BEFORE_COPIES = 3  # per epoch: Tune's temporary folder, the trial's own file, Tune's copy into its storage


def state_bytes(base: RunConfig, method: str) -> int:
    """Bytes of the trial's run.pt once it is in stage II (every optimiser state exists)."""
    info = dataset_info(base.data.dataset)
    cfg = apply_overrides(
        base,
        {
            "method": method,
            "budget.epochs": 3,
            "stage1.epochs": 1,
            "budget.iters_per_epoch": 1,
            "budget.batch_size": 8,
            "eval.every": 100,
        },
    )
    torch.manual_seed(0)

    def make():
        return (
            create_model(
                "resnet18",
                info.num_classes,
                in_channels=info.image_shape[0],
                mean=info.mean,
                std=info.std,
            )
            .eval()
            .requires_grad_(False)
        )

    val = torch.utils.data.TensorDataset(
        torch.rand(16, *info.image_shape), torch.randint(0, info.num_classes, (16,))
    )
    run = DistillationRun(cfg, Experts(make(), make()), device="cpu", val_data=val)
    for result in run.epochs():
        if result["stage"] == 2:  # epoch 2 of 3: no evaluation
            break
    buffer = io.BytesIO()
    torch.save(run.state_dict(), buffer)
    run.close()
    return buffer.getbuffer().nbytes


def writes_per_trial(base: RunConfig, epoch_s: float, eval_s: float) -> tuple[int, int, float]:
    """(writes before, writes after, trial seconds) over one trial of the space's budget."""
    clock = [0.0]
    cadence = CheckpointCadence(
        checkpoint_every_s(base.train.checkpoint_every_s, torch.device("cuda")), lambda: clock[0]
    )
    epochs, every = total_epochs(base), base.eval.every
    for epoch in range(1, epochs + 1):
        scored = epoch % every == 0 or epoch == epochs
        clock[0] += epoch_s + (eval_s if scored else 0.0)
        if cadence.due({"epoch": epoch, **({"val/aa_acc": 0.0} if scored else {})}, epochs):
            cadence.wrote(epoch)
    return BEFORE_COPIES * epochs, cadence.writes, clock[0]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--img-per-s", type=float, default=2483.0, help="stage-II speed (H200, compiled, CIFAR, batch 256)"
    )
    p.add_argument("--eval-s", type=float, default=0.0, help="seconds per val evaluation")
    p.add_argument(
        "--trials", type=int, default=64, help="concurrent trials for the shared-filesystem figure"
    )
    args = p.parse_args(argv)
    base = SearchSpace.from_yaml(default_space_path("cifar10")).base_config()
    epoch_s = base.budget.iters_per_epoch * base.budget.batch_size / args.img_per_s
    before, after, trial_s = writes_per_trial(base, epoch_s, args.eval_s)
    hours = trial_s / 3600
    print(
        f"CIFAR-10 trial: {total_epochs(base)} epochs of {base.budget.iters_per_epoch} x {base.budget.batch_size} "
        f"images ({epoch_s:.1f} s each at {args.img_per_s:,.0f} img/s), val every {base.eval.every}; "
        f"writes per trial: {before} before, {after} after"
    )
    print(
        "| method | run.pt MB | GB per trial-hour, before | after | cut | "
        f"{args.trials} trials' MB/s, before | after |"
    )
    print("|---|---|---|---|---|---|---|")
    for method in ("derd", "derd_no_nat"):
        size = state_bytes(base, method)
        b, a = before * size / hours, after * size / hours
        print(
            f"| {method} | {size / 1e6:.1f} | {b / 1e9:.1f} | {a / 1e9:.2f} | {b / a:.0f}x | "
            f"{args.trials * b / 3600 / 1e6:,.0f} | {args.trials * a / 3600 / 1e6:,.0f} |"
        )


if __name__ == "__main__":
    main()
