"""A whole trial, timed end to end: compile, stage I, stage II and validation, eager against compiled
(prints figures, asserts nothing).

    python benchmarks/bench_trial.py [--setting digits|cifar|imagenet100] [--device cpu|cuda]
                                     [--stage1-epochs 2] [--stage2-epochs 2] [--modes eager compiled]

Each mode builds the real ``DistillationRun`` of the setting's search space (its per-trial
config: student, batch, iterations per epoch, protocol), shortened to the given epochs with
validation at the end of each stage, and runs it. Teachers are randomly initialised (speed
does not depend on their weights); the CIFAR and ImageNet-100 settings validate on random
images of the search protocol's size (1,000). Printed per mode:

* wall time of the whole run, model building included, and its split: compilation (the run's
  ``time/compile_s``), stage I and stage II epochs (compilation taken out), validation;
* the device-minutes of one trial at the space's budget (``budget.epochs``, ``stage1.epochs``,
  ``eval.every``), from the per-epoch figures plus one compilation;
* validation's share of that trial, and the smallest ``eval.every`` that keeps it at or under 20%.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import torch  # noqa: E402
from bench_step import SETTINGS, device_name  # noqa: E402

from derd.config import apply_overrides  # noqa: E402
from derd.data import dataset_info, load_split  # noqa: E402
from derd.experts import Experts  # noqa: E402
from derd.methods import total_epochs  # noqa: E402
from derd.models import create_model  # noqa: E402
from derd.run import DistillationRun  # noqa: E402
from tuning.space import SearchSpace, default_space_path  # noqa: E402

MODES = {"eager": "off", "compiled": "on"}
VAL_SHARE = 0.20


def build(
    setting: str, device: torch.device, mode: str, stage1: int, stage2: int
) -> tuple[DistillationRun, SearchSpace]:
    dataset, student, teacher, _ = SETTINGS[setting]
    space = SearchSpace.from_yaml(default_space_path(dataset))
    info = dataset_info(dataset)
    cfg = apply_overrides(
        space.base_config(),
        {
            "method": "derd",
            "student.arch": student,
            "budget.epochs": stage1 + stage2,
            "stage1.epochs": stage1,
            "eval.every": max(1, stage1) if stage1 else stage2,
            "train.compile": MODES[mode],
        },
    )
    torch.manual_seed(0)

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

    if dataset == "digits":
        val = load_split("digits", "val")
    else:
        val = torch.utils.data.TensorDataset(
            torch.rand(1000, *info.image_shape), torch.randint(0, info.num_classes, (1000,))
        )
    return DistillationRun(cfg, Experts(make(), make()), device=device, val_data=val), space


def run_mode(setting: str, device: torch.device, mode: str, stage1: int, stage2: int) -> dict[str, float]:
    start = time.time()
    run, space = build(setting, device, mode, stage1, stage2)
    history = run.run()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    wall = time.time() - start
    run.close()
    compile_s = sum(h.get("time/compile_s", 0.0) for h in history)
    train = {
        s: [h["time/epoch_s"] - h.get("time/compile_s", 0.0) for h in history if h["stage"] == s]
        for s in (1, 2)
    }
    evals = [h["time/eval_s"] for h in history if "time/eval_s" in h]
    base = space.base_config()
    per = {s: statistics.mean(v) if v else 0.0 for s, v in train.items()}
    per_eval = statistics.mean(evals) if evals else 0.0
    epochs = total_epochs(base)
    warmup = base.stage1.epochs
    n_evals = math.ceil(epochs / base.eval.every)
    training = warmup * per[1] + (epochs - warmup) * per[2]
    trial = compile_s + training + n_evals * per_eval
    every = next(
        (
            k
            for k in range(1, epochs + 1)
            if math.ceil(epochs / k) * per_eval
            <= VAL_SHARE * (compile_s + training + math.ceil(epochs / k) * per_eval)
        ),
        epochs,
    )
    return {
        "wall": wall,
        "compile": compile_s,
        "stage1": sum(train[1]),
        "stage2": sum(train[2]),
        "val": sum(evals),
        "per1": per[1],
        "per2": per[2],
        "per_eval": per_eval,
        "trial_min": trial / 60,
        "val_share": n_evals * per_eval / trial,
        "every": every,
        "space_every": base.eval.every,
        "epochs": epochs,
        "warmup": warmup,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--setting", default="cifar" if torch.cuda.is_available() else "digits", choices=list(SETTINGS)
    )
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--stage1-epochs", type=int, default=2)
    p.add_argument("--stage2-epochs", type=int, default=2)
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    args = p.parse_args()
    device = torch.device(args.device)
    print(
        f"torch {torch.__version__}, {device_name(device)}; setting {args.setting}, DERD, {args.stage1_epochs} + {args.stage2_epochs} epochs"
    )
    print(
        "| mode | wall s | compile s | stage I s | stage II s | validation s | s/epoch I | s/epoch II | s/validation | "
        "device-min per trial (space budget) | validation share | eval.every for <= 20% (space's) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for mode in args.modes:
        r = run_mode(args.setting, device, mode, args.stage1_epochs, args.stage2_epochs)
        print(
            f"| {mode} | {r['wall']:.1f} | {r['compile']:.1f} | {r['stage1']:.1f} | {r['stage2']:.1f} | {r['val']:.1f} | "
            f"{r['per1']:.2f} | {r['per2']:.2f} | {r['per_eval']:.2f} | {r['trial_min']:.2f} "
            f"({r['warmup']} + {r['epochs'] - r['warmup']} epochs) | {100 * r['val_share']:.0f}% | {r['every']} "
            f"({r['space_every']}) |",
            flush=True,
        )


if __name__ == "__main__":
    main()
