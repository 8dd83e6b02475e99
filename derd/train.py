"""Final training of a config: ``python -m derd.train --config X.yaml [--out DIR]``.

Runs the config's method to the end with a progress bar, then the ``full`` protocol on the
test split (``--protocol search`` for a quick look), and writes to DIR: student.pt,
generator.pt (generator methods), run.pt (resumable state), config.yaml, table.json, table.md,
samples.png (the paper's Fig. 2) and accuracy.png (its Fig. 1). The test scores carry the
protocol they were measured under (its name, eps and attacks: ``derd.evaluate.protocol_record``)
in table.json, table.md's heading and student.pt's metadata. An interrupted training continues from DIR/run.pt when started
again with the same --out (Ctrl-C says so in one line).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

from derd.cache import cache_dir
from derd.cadence import CheckpointCadence, checkpoint_every_s
from derd.checkpoints import NORMALIZE_CHOICES, save_checkpoint
from derd.config import RunConfig, apply_overrides, from_dict, load_yaml, preset, save_yaml, to_dict
from derd.data import available_datasets, load_split, make_loader
from derd.device import check_device
from derd.errors import UserError, check_output_folder, cli_errors
from derd.evaluate import (
    describe_protocol,
    eval_batch_size,
    evaluate,
    infer_protocol,
    markdown_table,
    protocol_record,
)
from derd.experts import load_experts
from derd.footprint import check_memory
from derd.inputs import expect, parse_yaml, read_json
from derd.plots import save_accuracy_curve, save_sample_grid
from derd.run import DistillationRun

TEACHER_FLAGS = {
    "teacher_natural": "teachers.natural",
    "teacher_robust": "teachers.robust",
    "teacher_natural_arch": "teachers.natural_arch",
    "teacher_robust_arch": "teachers.robust_arch",
    "teacher_normalize": "teachers.normalize",
}


def add_teacher_flags(p: argparse.ArgumentParser) -> None:
    """The flags that name the teachers, shared by derd.train and tuning/search.py."""
    p.add_argument("--teacher-natural", help="natural teacher checkpoint (digits: trained on first use)")
    p.add_argument("--teacher-robust", help="robust teacher checkpoint (digits: trained on first use)")
    p.add_argument(
        "--teacher-natural-arch", help="architecture of a plain state_dict natural teacher (e.g. wrn_34_10)"
    )
    p.add_argument("--teacher-robust-arch", help="architecture of a plain state_dict robust teacher")
    p.add_argument(
        "--teacher-normalize",
        choices=NORMALIZE_CHOICES,
        help="plain state_dicts: 'none' if the networks take raw [0, 1] images (normalise inside "
        "themselves, as RobustBench models do); default 'dataset'",
    )


def teacher_overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {
        key: getattr(args, flag)
        for flag, key in TEACHER_FLAGS.items()
        if getattr(args, flag, None) is not None
    }


def train(
    cfg: RunConfig, out: Path, *, progress: bool = True, test_protocol: str | None = None
) -> dict[str, Any]:
    """Train, test and write the artefacts; returns {"test": table, "history": [...]}."""
    experts = load_experts(cfg, progress=progress)  # bad teachers fail before anything is written
    test = load_split(cfg.data.dataset, "test", cfg.data.root, image_size=cfg.data.image_size)
    state = out / "run.pt"
    if state.is_file():
        saved = DistillationRun.read_state(state)
        if to_dict(from_dict(saved["config"])) != to_dict(cfg):  # before building the other config's run
            raise UserError(f"{state} belongs to another config; use a fresh --out or delete it")
        run = DistillationRun.resume(saved, experts)
    else:
        run = DistillationRun(cfg, experts)
    out.mkdir(parents=True, exist_ok=True)
    save_yaml(cfg, out / "config.yaml")
    from derd.progress import progress_bar

    bar = progress_bar(
        total=run.total_epochs,
        initial=run.epoch,
        desc=f"{cfg.method} on {cfg.data.dataset}",
        enabled=progress,
    )
    cadence = CheckpointCadence(checkpoint_every_s(cfg.train.checkpoint_every_s, run.device))
    try:
        for result in run.epochs():
            if cadence.due(result, run.total_epochs):
                run.save(state)
                cadence.wrote(run.epoch)
            shown = {
                k.split("/")[-1]: f"{v:.2f}"
                for k, v in result.items()
                if k.startswith("val/") and k != "val/n_images"
            }
            bar.set_postfix(stage=result["stage"], **shown)
            bar.update(1)
    finally:
        bar.close()
        run.close()
    info = run.info
    meta = {
        "arch": cfg.student.arch,
        "dataset": info.name,
        "num_classes": info.num_classes,
        "kind": f"student-{cfg.method}",
    }
    protocol = test_protocol or cfg.eval.final_protocol
    batch = eval_batch_size(cfg.data.val_batch_size, info.image_shape, run.device)
    table = evaluate(
        run.student,
        make_loader(test, batch),
        protocol,
        eps=info.eps,
        device=run.device,
        seed=cfg.seed,
        progress=progress,
    )
    table = {f"test/{k}": v for k, v in table.items()}
    measured = protocol_record(protocol, info.eps)
    save_checkpoint(out / "student.pt", run.student, {**meta, "table": table, "protocol": measured})
    generator = run.method.modules.get("generator")
    if generator is not None:
        torch.save(generator.state_dict(), out / "generator.pt")
    samples = run.sample(64)
    if samples is not None:
        save_sample_grid(samples, out / "samples.png")
    save_accuracy_curve(run.history, out / "accuracy.png", title=f"{cfg.method} student on {info.name}")
    (out / "table.json").write_text(
        json.dumps(
            {"config": to_dict(cfg), "protocol": measured, "test": table, "history": run.history}, indent=1
        )
    )
    row = {k.removeprefix("test/"): v for k, v in table.items()}
    (out / "table.md").write_text(
        f"Test split, {describe_protocol(measured)}\n\n"
        + markdown_table({f"{cfg.method} ({cfg.student.arch})": row})
        + "\n"
    )
    return {"test": table, "protocol": measured, "history": run.history}


def read_table(path: str | os.PathLike, dataset: str | None = None) -> dict[str, Any]:
    """A ``table.json`` that ``train`` wrote, its shape checked: ``test`` maps metric names to finite
    numbers; ``config`` (a mapping) and ``history`` (a list) where present; ``protocol``: the one its
    test scores were measured under (``derd.evaluate.protocol_record``). A table written before tables
    recorded their protocol gets the one whose columns it holds, at its dataset's eps (its config's,
    else ``dataset``); ``protocol`` is None when that cannot be told."""
    data = expect(read_json(path, "table"), dict, str(path))
    test = expect(data.get("test"), dict, f"{path}: test")
    for key, value in test.items():
        expect(value, (int, float), f"{path}: test.{key}")
    for key, kind in (("config", dict), ("history", list)):
        if key in data:
            expect(data[key], kind, f"{path}: {key}")
    data["protocol"] = table_protocol(data, str(path), dataset)
    return data


def table_protocol(data: dict[str, Any], where: str, dataset: str | None = None) -> dict[str, Any] | None:
    """The protocol a read ``table.json`` records, its shape checked, or the one inferred for an older
    table (``read_table``)."""
    if "protocol" in data:
        record = expect(data["protocol"], dict, f"{where}: protocol")
        expect(record.get("name"), str, f"{where}: protocol.name")
        expect(record.get("eps"), (int, float), f"{where}: protocol.eps")
        for attack in expect(record.get("attacks"), list, f"{where}: protocol.attacks"):
            expect(attack, str, f"{where}: protocol.attacks[]")
        if record.get("max_images") is not None:
            expect(record["max_images"], int, f"{where}: protocol.max_images")
        return {
            "name": record["name"],
            "eps": float(record["eps"]),
            "attacks": list(record["attacks"]),
            "max_images": record.get("max_images"),
        }
    name = infer_protocol(k.removeprefix("test/") for k in data["test"])
    section = data.get("config", {}).get("data")
    dataset = section.get("dataset", dataset) if isinstance(section, dict) else dataset
    if name is None or dataset is None:
        return None
    from derd.data import available_datasets, dataset_info

    return protocol_record(name, dataset_info(dataset).eps) if dataset in available_datasets() else None


def parse_sets(items: list[str]) -> dict[str, Any]:
    """``["method=nature", "stage2.epochs=5"]`` to ``{"method": "nature", "stage2.epochs": 5}``."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"--set {item!r}: expected KEY=VALUE, e.g. --set stage2.lambda_nat=1.0")
        try:
            out[key.strip()] = parse_yaml(value, f"--set {item!r}")
        except UserError:
            raise UserError(
                f"--set {item!r}: {value!r} is not a valid YAML value (check its brackets and quotes)"
            ) from None
    return out


@cli_errors
def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m derd.train", description="Train a student from a config and report its test table."
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--config", help="run config YAML (as exported by analysis/export.py)")
    src.add_argument(
        "--preset",
        help=f"start from a dataset's preset (the paper's weights): {', '.join(available_datasets())}",
    )
    p.add_argument("--method", help="the method to train (default: the config's; derd for a preset)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a dotted config key, e.g. --set stage2.lambda_nat=1.0 (YAML value syntax)",
    )
    add_teacher_flags(p)
    p.add_argument("--data-root", help="dataset root (CIFAR, ImageNet-100)")
    p.add_argument("--out", help="output folder (default: runs/train-<method>-<dataset>-<time>)")
    p.add_argument(
        "--protocol",
        choices=("full", "search"),
        help="test protocol (default: the config's eval.final_protocol)",
    )
    args = p.parse_args(argv)
    cache_dir()  # a bad $DERD_CACHE is one line before anything is trained
    cfg = load_yaml(args.config) if args.config else preset(args.preset)
    flags = {
        **teacher_overrides(args),
        **({"method": args.method} if args.method else {}),
        **({"data.root": args.data_root} if args.data_root else {}),
    }
    cfg = apply_overrides(cfg, {**flags, **parse_sets(args.set)})
    check_memory(cfg, check_device(cfg.device))
    out = (
        Path(args.out)
        if args.out
        else Path("runs") / f"train-{cfg.method}-{cfg.data.dataset}-{time.strftime('%Y%m%d-%H%M%S')}"
    )
    check_output_folder(out)
    start = time.time()
    try:
        train(cfg, out, test_protocol=args.protocol)
    except KeyboardInterrupt:
        print(
            f"\ninterrupted; run the same command again (same --out {out}) to resume from {out / 'run.pt'}",
            file=sys.stderr,
        )
        raise SystemExit(130) from None
    print(f"{cfg.method} on {cfg.data.dataset}, test split, {time.time() - start:.0f} s; artefacts in {out}")
    print((out / "table.md").read_text())


if __name__ == "__main__":
    main()
