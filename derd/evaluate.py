"""The paper's robustness table: Clean, FGSM, PGD_S, PGD_T, CW, AA and their average.

``evaluate(model, loader, protocol, eps)`` returns the columns as a dict keyed by metric
name (``clean_acc``, ``fgsm_acc``, ``pgd_acc``, ``pgd_t_acc``, ``cw_acc``, ``aa_acc``,
``ave_acc``), accuracies in percent, and for each column but Ave its worst-class accuracy
(``worst_aa_acc``: the lowest per-class accuracy under that attack, over the classes the
scored images hold; ``worst``), which an average hides (FERD, arXiv 2509.20793, reports it).

Protocols
---------
``full``: exactly the paper's table (docs/protocols.md) (at eps = 8/255; other eps scale every step size by
eps / (8/255), which leaves the CIFAR and ImageNet-100 protocol unchanged):

* FGSM: one signed step of size eps;
* PGD_S: 20 steps of 2/255, uniform random start, CE loss (Madry et al.);
* PGD_T: 20 steps of 0.003, start 0.001 * N(0, I), CE loss (TRADES);
* CW: 30 steps of 0.003 on the CW margin loss;
* AA: AutoAttack, standard version; Ave: mean of the six columns, Clean included.

``search``: what a search trial is scored with. Clean, PGD_S and standard AutoAttack's
first two attacks exactly (APGD-CE with one restart, then APGD-T over 9 target classes;
no FAB-T or Square) on a fixed prefix of the val split (its first 1,000 images). Its AA is
the robust accuracy standard AA reports after APGD-T, so it can only be higher than the
full AA, by what FAB-T and Square add (on models without gradient masking, usually a few
tenths of a percent in RobustBench's per-attack logs). ``benchmarks/bench_protocol.py``
measures how well it ranks students like ``full`` and what it costs.

Every score is written with the protocol it was measured under (``protocol_record``: the
protocol's name, eps, each column's attack and its image limit), so a report never puts two
protocols in one table (``describe_protocol`` names one in a heading, ``same_protocol`` compares
two, ``infer_protocol`` tells a table from before this by its columns).

Every column draws its random start from its own generator seeded from ``seed`` and the
column's name, so a column's value does not depend on which other columns ran before it:
PGD_S is the same under both protocols.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import torch
from torch import nn
from torch.utils.data import DataLoader

from derd import attacks
from derd.device import no_autocast
from derd.errors import cli_errors

REFERENCE_EPS = 8 / 255

# metric key -> column name in the paper's table, in the table's order
COLUMNS: dict[str, str] = {
    "clean_acc": "Clean",
    "fgsm_acc": "FGSM",
    "pgd_acc": "PGD_S",
    "pgd_t_acc": "PGD_T",
    "cw_acc": "CW",
    "aa_acc": "AA",
    "ave_acc": "Ave",
}


WORST_PREFIX = "worst_"


def worst(column: str) -> str:
    """The worst-class metric of a column: ``worst("aa_acc")`` is ``worst_aa_acc``."""
    return f"{WORST_PREFIX}{column}"


WORST_AA = worst("aa_acc")
# the columns every report shows: the paper's, then the worst-class AA
REPORTED = (*COLUMNS, WORST_AA)


def is_worst(metric: str) -> bool:
    """Whether a metric key (``worst_aa_acc``, ``val/worst_aa_acc``) is a worst-class accuracy."""
    return metric.rpartition("/")[2].startswith(WORST_PREFIX)


@dataclass(frozen=True)
class Protocol:
    """Which columns to compute, on how many images, with which AutoAttack version."""

    name: str
    columns: tuple[str, ...]
    max_images: int | None
    aa_version: str
    aa_label: str = ""  # how a table names its AA column's attacks


PROTOCOLS: dict[str, Protocol] = {
    "full": Protocol(
        "full",
        ("clean_acc", "fgsm_acc", "pgd_acc", "pgd_t_acc", "cw_acc", "aa_acc"),
        None,
        "standard",
        "standard",
    ),
    "search": Protocol("search", ("clean_acc", "pgd_acc", "aa_acc"), 1000, "fast", "APGD-CE+T"),
}


# what each version of the AA column runs (``attacks.autoattack``)
AA_ATTACKS = {
    "standard": "AutoAttack standard (APGD-CE, APGD-T, FAB-T, Square)",
    "fast": "APGD-CE + APGD-T (standard AutoAttack's first two)",
}


@dataclass(frozen=True)
class IterativeAttack:
    """One iterative column's attack at eps = 8/255 (step and start scale with eps / (8/255)): the one
    place its numbers are written, read both to run it (``column_attacks``) and to describe it
    (``column_attack``)."""

    steps: int
    step_size: float
    start: str  # "uniform", "normal" (start_scale * N(0, I)) or "none"
    loss: str  # "CE" or "CW margin"
    start_scale: float = 0.0

    def described(self, scale: float) -> str:
        start = {
            "uniform": "uniform start",
            "none": "",
            "normal": f"start {self.start_scale * scale:.4g}*N(0, I)",
        }[self.start]
        loss = "CW margin loss" if self.loss == "CW margin" else self.loss
        return ", ".join(p for p in (f"{self.steps} steps of {self.step_size * scale:.4g}", start, loss) if p)


ITERATIVE_ATTACKS: dict[str, IterativeAttack] = {
    "pgd_acc": IterativeAttack(20, 2 / 255, "uniform", "CE"),
    "pgd_t_acc": IterativeAttack(20, 0.003, "normal", "CE", start_scale=0.001),
    "cw_acc": IterativeAttack(30, 0.003, "none", "CW margin"),
}


def column_attack(column: str, eps: float, aa_version: str) -> str:
    """The attack behind a column at radius ``eps``, in words with its step sizes (``column_attacks``
    runs it): ``PGD_S: 20 steps of 0.00784, uniform start, CE``."""
    scale = eps / REFERENCE_EPS
    described = {
        "clean_acc": "no attack",
        "fgsm_acc": f"one signed step of {eps:.4g}",
        "aa_acc": AA_ATTACKS[aa_version],
        **{c: a.described(scale) for c, a in ITERATIVE_ATTACKS.items()},
    }
    return f"{COLUMNS[column]}: {described[column]}"


def protocol_record(protocol: str | Protocol, eps: float, validation: str | None = None) -> dict[str, Any]:
    """What a score was measured under, written beside every score (a training's ``table.json``, its
    MLflow tags, an exported config's ``origin``) so that no reader mixes protocols: the protocol's
    name, the L-inf radius, each column's attack and the images it is limited to (None: all); for a
    val score also what it was scored on (``validation``: ``real`` or ``synthetic``, ``eval.validation``)."""
    proto = PROTOCOLS[protocol] if isinstance(protocol, str) else protocol
    record = {
        "name": proto.name,
        "eps": float(eps),
        "attacks": [column_attack(c, eps, proto.aa_version) for c in proto.columns],
        "max_images": proto.max_images,
    }
    return {**record, "validation": validation} if validation else record


def infer_protocol(columns: Iterable[str]) -> str | None:
    """The protocol whose columns a table holds exactly (``ave_acc`` aside), for a table written before
    tables recorded their protocol; None when no protocol computes those columns."""
    held = set(columns) - {"ave_acc"}
    return next((name for name, proto in PROTOCOLS.items() if held == set(proto.columns)), None)


def describe_protocol(record: dict[str, Any] | None) -> str:
    """A table's heading for the protocol its scores were measured under: ``search protocol, eps 0.2;
    AA = APGD-CE + APGD-T (standard AutoAttack's first two); first 1000 images``; for a score whose
    protocol was never recorded, says so."""
    if not record:
        return "protocol not recorded"
    aa = next(
        (a.split(": ", 1)[1] for a in record.get("attacks", []) if a.startswith(f"{COLUMNS['aa_acc']}: ")),
        None,
    )
    limit = record.get("max_images")
    return (
        f"{record['name']} protocol, eps {record['eps']:.4g}"
        + (f"; AA = {aa}" if aa else "")
        + (f"; first {limit} images" if limit else "")
        + (
            "; on the synthetic validation set (no real image), not the val split"
            if record.get("validation") == "synthetic"
            else ""
        )
    )


def same_protocol(a: dict[str, Any] | None, b: dict[str, Any] | None) -> bool:
    """Whether two recorded protocols are the same measurement (name and radius); two unrecorded ones
    are alike, an unrecorded one is like no recorded one."""
    if not a or not b:
        return not a and not b
    return (
        a["name"] == b["name"]
        and math.isclose(a["eps"], b["eps"], rel_tol=1e-6)
        and a.get("validation", "real") == b.get("validation", "real")
    )


def header(column: str, protocol: str | None = None, split: str | None = None) -> str:
    """A column's header: ``Clean``; with its protocol, AA names its attacks (``AA (standard)``,
    ``AA (APGD-CE+T)``); with its split, ``Clean (val)``, ``AA (APGD-CE+T, val)``; a worst-class
    column ``worst-class AA (APGD-CE+T, val)``."""
    base = column.removeprefix(WORST_PREFIX)
    notes = [PROTOCOLS[protocol].aa_label] if protocol and base == "aa_acc" else []
    notes += [split] if split else []
    return (
        ("worst-class " if base != column else "")
        + COLUMNS[base]
        + (f" ({', '.join(notes)})" if notes else "")
    )


def val(column: str) -> str:
    """The val metric of a protocol column, as a run reports it: ``val("aa_acc")`` is ``val/aa_acc``."""
    return f"val/{column}"


VAL_CLEAN, VAL_PGD, VAL_AA = val("clean_acc"), val("pgd_acc"), val("aa_acc")
VAL_WORST_AA = val(WORST_AA)  # the lowest per-class val accuracy under AA (worst)
VAL_N = "val/n_images"  # images scored: a figure's binomial uncertainty


def column_header(metric: str) -> str:
    """A val metric's column header, naming the search protocol and the split (``AA (APGD-CE+T, val)``,
    ``Clean (val)``); the metric itself when it is no val column."""
    split, _, column = metric.partition("/")
    if column.removeprefix(WORST_PREFIX) not in COLUMNS or split != "val":
        return metric
    return header(column, "search", "val")


AttackFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


def column_generator(column: str, seed: int, device: torch.device | str) -> torch.Generator:
    """The random stream of one column: seeded by ``seed`` and the column's name, on ``device``."""
    offset = list(COLUMNS).index(column)
    return torch.Generator(device=device).manual_seed(seed * 1000 + offset)


def column_attacks(
    eps: float, seed: int, aa_version: str, device: torch.device | str = "cpu"
) -> dict[str, AttackFn]:
    """The attack behind each column at radius eps (``ITERATIVE_ATTACKS``' step sizes scaled from 8/255),
    each iterative one with a random start drawing from its own column's generator."""
    scale = eps / REFERENCE_EPS
    losses = {"CE": attacks.ce_loss, "CW margin": attacks.cw_margin_loss}

    def iterative(column: str, spec: IterativeAttack) -> AttackFn:
        gen = column_generator(column, seed, device) if spec.start != "none" else None
        return lambda m, x, y: attacks.pgd(
            m,
            x,
            y,
            eps=eps,
            steps=spec.steps,
            step_size=spec.step_size * scale,
            start=spec.start,
            start_scale=spec.start_scale * scale,
            loss_fn=losses[spec.loss],
            generator=gen,
        )

    return {
        "clean_acc": lambda m, x, y: x,
        "fgsm_acc": lambda m, x, y: attacks.fgsm(m, x, y, eps=eps),
        **{c: iterative(c, a) for c, a in ITERATIVE_ATTACKS.items()},
        "aa_acc": lambda m, x, y: attacks.autoattack(
            m, x, y, eps=eps, version=aa_version, seed=seed, batch_size=len(x)
        ),
    }


def eval_batch_size(
    requested: int | None, image_shape: tuple[int, int, int], device: torch.device | str
) -> int:
    """Images per evaluation batch: the config's ``data.val_batch_size`` when set; else 256 on the CPU
    (the batch every CPU score was made with) and, on a GPU, as many as its attacks fit: 1,024 at
    32 px and below, 256 above (``evaluate`` halves a batch that does not fit)."""
    if requested is not None:
        return requested
    if torch.device(device).type != "cuda":
        return 256
    return 1024 if image_shape[-1] <= 32 else 256


def evaluate(
    model: nn.Module,
    loader: DataLoader,
    protocol: str | Protocol,
    *,
    eps: float,
    device: torch.device | str = "cpu",
    seed: int = 0,
    progress: bool = False,
) -> dict[str, float]:
    """Accuracy (percent) of ``model`` under each column of ``protocol``.

    The model's parameters, BN statistics and mode are left as they were, and the global
    RNG state is untouched (AutoAttack reseeds it internally), so evaluating in the middle
    of a training run does not change that run. A compiled model is evaluated eagerly, so a
    score never depends on compilation. A batch that does not fit in GPU memory is scored in
    halves.
    """
    proto = PROTOCOLS[protocol] if isinstance(protocol, str) else protocol
    device = torch.device(device)
    correct: torch.Tensor | None = None  # [column, class] correct predictions
    per_class: torch.Tensor | None = None  # [class] images scored
    total = 0
    devices = [device] if device.type == "cuda" else []
    with (
        torch.random.fork_rng(devices=devices),
        attacks.eval_mode(model),
        no_autocast(device),
        torch.compiler.set_stance("force_eager"),
    ):
        torch.manual_seed(seed)
        fns = column_attacks(eps, seed, proto.aa_version, device)
        bar = _progress(loader, progress, f"eval[{proto.name}]")
        for x, y in bar:
            if proto.max_images is not None:
                keep = proto.max_images - total
                if keep <= 0:
                    break
                x, y = x[:keep], y[:keep]
            x, y = x.to(device), y.to(device)
            batch = _score(model, fns, proto.columns, x, y)
            seen = torch.bincount(y, minlength=batch.shape[1])
            correct, per_class = (batch, seen) if correct is None else (correct + batch, per_class + seen)
            total += len(y)
    if total == 0 or correct is None or per_class is None:
        raise ValueError("evaluation loader is empty")
    return _table(proto.columns, correct.cpu(), per_class.cpu())  # one host read


def _table(columns: tuple[str, ...], correct: torch.Tensor, per_class: torch.Tensor) -> dict[str, float]:
    """The columns' accuracies (percent), Ave when the table is complete, and each column's worst-class
    accuracy over the classes that hold at least one scored image."""
    total = int(per_class.sum())
    held = per_class > 0
    result = {col: 100.0 * int(correct[i].sum()) / total for i, col in enumerate(columns)}
    if set(columns) == set(COLUMNS) - {"ave_acc"}:
        result["ave_acc"] = sum(result.values()) / len(result)
    for i, col in enumerate(columns):
        result[worst(col)] = float((100.0 * correct[i][held].double() / per_class[held].double()).min())
    return result


def _score(
    model: nn.Module, fns: dict[str, AttackFn], columns: tuple[str, ...], x: torch.Tensor, y: torch.Tensor
) -> torch.Tensor:
    """Correct predictions per column and class on one batch, [column, class] (halved, recursively,
    when it does not fit); the classes are the model's outputs."""
    try:
        counts = []
        for col in columns:
            x_eval = fns[col](model, x, y)
            with torch.no_grad():
                logits = model(x_eval)
            hits = y[logits.argmax(1) == y]
            counts.append(torch.bincount(hits, minlength=logits.shape[1]))
        return torch.stack(counts)
    except torch.cuda.OutOfMemoryError:
        if len(x) == 1:
            raise
        torch.cuda.empty_cache()
        half = len(x) // 2
        return _score(model, fns, columns, x[:half], y[:half]) + _score(
            model, fns, columns, x[half:], y[half:]
        )


def _progress(iterable, enabled: bool, desc: str):
    """The batches, shown as progress when ``enabled`` (``derd.progress``: plain lines off a terminal)."""
    if not enabled:
        return iterable
    from derd.progress import progress_bar

    return progress_bar(iterable, desc=desc, leave=False)


def markdown_table(rows: dict[str, dict[str, float]]) -> str:
    """A Markdown table in the paper's column order, then the worst-class AA column when a row has it;
    rows are {name: metrics}."""
    cols = [c for c in REPORTED if any(c in r for r in rows.values())]
    lines = ["| model | " + " | ".join(header(c) for c in cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, metrics in rows.items():
        cells = [f"{metrics[c]:.2f}" if c in metrics and not math.isnan(metrics[c]) else "-" for c in cols]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


@cli_errors
def main(argv: list[str] | None = None) -> None:
    from derd.checkpoints import NORMALIZE_CHOICES, load_checkpoint
    from derd.data import IMAGE_SIZES, dataset_info, download, load_split, make_loader
    from derd.device import check_device
    from derd.settings import SEED_MAX, check_flag

    p = argparse.ArgumentParser(
        prog="python -m derd.evaluate", description="Print the robustness table of a checkpoint."
    )
    p.add_argument("--dataset", required=True)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--arch", help="architecture, for a plain state_dict without metadata")
    p.add_argument(
        "--normalize",
        choices=NORMALIZE_CHOICES,
        default="dataset",
        help="plain state_dicts: 'none' if the network takes raw [0, 1] images (normalises inside itself)",
    )
    p.add_argument("--protocol", choices=sorted(PROTOCOLS), default="full")
    p.add_argument("--split", choices=("val", "test"), default="val")
    p.add_argument("--data-root")
    p.add_argument("--download", action="store_true", help="fetch CIFAR into --data-root first (torchvision)")
    p.add_argument("--image-size", type=int)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    check_flag(args.batch_size, "--batch-size", 1, 65_536)
    check_flag(args.seed, "--seed", 0, SEED_MAX)
    check_flag(args.image_size, "--image-size", *IMAGE_SIZES)
    device = check_device(args.device)
    info = dataset_info(args.dataset, args.image_size)
    if args.download:
        download(info.name, args.data_root)
    model, meta = load_checkpoint(args.checkpoint, info, arch=args.arch, normalize=args.normalize)
    model.to(device)
    data = load_split(args.dataset, args.split, args.data_root, image_size=args.image_size)
    metrics = evaluate(
        model,
        make_loader(data, args.batch_size),
        args.protocol,
        eps=info.eps,
        device=device,
        seed=args.seed,
        progress=True,
    )
    name = f"{meta.get('kind', 'model')} {meta.get('arch', args.arch)}"
    print(f"{args.dataset} {args.split} split, protocol {args.protocol}, eps {info.eps:.4f}")
    print(markdown_table({name: metrics}))


if __name__ == "__main__":
    main()
