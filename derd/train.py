"""Final training of a config: ``python -m derd.train --config X.yaml [--out DIR]``.

Runs both stages with a progress bar, then the ``full`` protocol on the test split, and
writes to DIR: student.pt, generator.pt, run.pt (resumable state), config.yaml,
table.json, table.md, samples.png (Fig. 2) and accuracy.png (Fig. 1). An interrupted
training continues from DIR/run.pt when started again with the same --out.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

from derd.config import RunConfig, apply_overrides, load_yaml, preset, save_yaml, to_dict
from derd.data import load_split, make_loader
from derd.errors import UserError, cli_errors
from derd.evaluate import evaluate, markdown_table
from derd.method import DERDRun, load_experts
from derd.plots import save_accuracy_curve, save_sample_grid
from derd.teachers import save_checkpoint


def train(cfg: RunConfig, out: Path, *, progress: bool = True, test_protocol: str | None = None) -> dict[str, Any]:
    """Train, test and write the artefacts; returns {"test": table, "history": [...]}."""
    out.mkdir(parents=True, exist_ok=True)
    save_yaml(cfg, out / "config.yaml")
    experts = load_experts(cfg, progress=progress)
    state = out / "run.pt"
    if state.is_file():
        run = DERDRun.resume(state, experts)
        if to_dict(run.cfg) != to_dict(cfg):
            raise UserError(f"{state} belongs to another config; use a fresh --out or delete it")
    else:
        run = DERDRun(cfg, experts)
    from tqdm import tqdm

    bar = tqdm(total=run.total_epochs, initial=run.epoch, desc=f"{cfg.variant} on {cfg.data.dataset}", disable=not progress)
    for result in run.epochs():
        run.save(state)
        shown = {k.split("/")[-1]: f"{v:.2f}" for k, v in result.items() if k.startswith("val/")}
        bar.set_postfix(stage=result["stage"], **shown)
        bar.update(1)
    bar.close()
    run.close()
    info = run.info
    meta = {"arch": cfg.student.arch, "dataset": info.name, "num_classes": info.num_classes, "kind": f"student-{cfg.variant}"}
    test = load_split(info.name, "test", cfg.data.root, image_size=cfg.data.image_size)
    protocol = test_protocol or cfg.eval.final_protocol
    table = evaluate(run.student, make_loader(test, cfg.data.val_batch_size), protocol, eps=info.eps,
                     device=run.device, seed=cfg.seed, progress=progress)
    table = {f"test/{k}": v for k, v in table.items()}
    save_checkpoint(out / "student.pt", run.student, {**meta, "table": table})
    if run.generator is not None:
        torch.save(run.generator.state_dict(), out / "generator.pt")
        with torch.no_grad():
            run.generator.eval()
            samples = run.generator(torch.randn(64, cfg.student.latent_dim, generator=torch.Generator().manual_seed(0)).to(run.device))
        save_sample_grid(samples, out / "samples.png")
    save_accuracy_curve(run.history, out / "accuracy.png", title=f"{cfg.variant} student on {info.name}")
    (out / "table.json").write_text(json.dumps({"config": to_dict(cfg), "test": table, "history": run.history}, indent=1))
    row = {k.removeprefix("test/"): v for k, v in table.items()}
    (out / "table.md").write_text(markdown_table({f"{cfg.variant} ({cfg.student.arch})": row}) + "\n")
    return {"test": table, "history": run.history}


def parse_sets(items: list[str]) -> dict[str, Any]:
    """``["variant=nature", "stage2.epochs=5"]`` to ``{"variant": "nature", "stage2.epochs": 5}``."""
    import yaml

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"--set {item!r}: expected KEY=VALUE, e.g. --set stage2.lambda_nat=1.0")
        out[key.strip()] = yaml.safe_load(value)
    return out


@cli_errors
def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m derd.train", description="Train a DERD student from a config and report its test table.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--config", help="run config YAML (as exported by analysis/export.py)")
    src.add_argument("--preset", help="start from a dataset's preset (the paper's weights): digits, cifar10, ...")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a dotted config key, e.g. --set variant=nature (YAML value syntax)")
    p.add_argument("--out", help="output folder (default: runs/train-<variant>-<dataset>-<time>)")
    p.add_argument("--protocol", choices=("full", "search"), help="test protocol (default: the config's eval.final_protocol)")
    args = p.parse_args(argv)
    cfg = load_yaml(args.config) if args.config else preset(args.preset)
    cfg = apply_overrides(cfg, parse_sets(args.set))
    out = Path(args.out) if args.out else Path("runs") / f"train-{cfg.variant}-{cfg.data.dataset}-{time.strftime('%Y%m%d-%H%M%S')}"
    start = time.time()
    train(cfg, out, test_protocol=args.protocol)
    print(f"{cfg.variant} on {cfg.data.dataset}, test split, {time.time() - start:.0f} s; artefacts in {out}")
    print((out / "table.md").read_text())


if __name__ == "__main__":
    main()
