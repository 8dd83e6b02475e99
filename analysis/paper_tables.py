"""The paper's Tables 1-3 for one dataset: every method at the dataset's preset budget, seeds, test split.

    python analysis/report.py --paper-tables --dataset digits --seeds 0 1 2 [--out reports/paper-digits]

Runs (or reuses: a finished folder is read back, an interrupted one resumes) every
registered method with ``derd.train`` at ``config.preset(dataset, method)``, plus the
real-data references, the student architecture trained on the teacher split:
"Nature" (natural training) and "SAT" (PGD adversarial training, ``derd.teachers``). Each
row is mean ± std over the seeds of the ``full`` protocol on the test split. Tables, as
in the paper's supplement:

1. real data vs data-free: Nature, SAT, the data-free undefended ``nature`` and DERD;
2. data-free robust distillation: DAFL, DFAD, ZSKT, CMI, DFARD and DERD;
3. DERD's variants: DERD_inv, DERD w/o T_nat and DERD.

For CIFAR-10 and ImageNet-100 the paper's published rows are printed beside ours.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from pathlib import Path
from typing import Any, Callable

from analysis.paper_results import PAPER_ROWS
from derd.errors import UserError
from derd.evaluate import REPORTED, describe_protocol, header, protocol_record
from derd.methods import available_methods, footnotes, get_method
from derd.train import read_table

REFERENCES = {
    "nature_real": "Nature (real data, student arch)",
    "sat_real": "SAT (real data, PGD-AT, student arch)",
}
TABLES = {
    1: "Table 1: data-free DERD against training on real data",
    2: "Table 2: data-free robust distillation methods",
    3: "Table 3: DERD's variants",
}


def rows_of_table(number: int) -> list[str]:
    """The real-data references (table 1), the registered methods of the table, then DERD (every
    table compares with it)."""
    members = [m for m in available_methods() if get_method(m).table == number and m != "derd"]
    return (list(REFERENCES) if number == 1 else []) + members + ["derd"]


def label(key: str) -> str:
    return REFERENCES.get(key) or get_method(key).label


def read_full(table: Path, dataset: str) -> dict[str, Any]:
    """A finished row's ``table.json`` (``derd.train.read_table``), refused unless its scores were measured
    under the full protocol at the dataset's eps: the tables never mix protocols."""
    from derd.data import dataset_info
    from derd.evaluate import same_protocol

    data = read_table(table, dataset)
    if not same_protocol(data["protocol"], protocol_record("full", dataset_info(dataset).eps)):
        raise UserError(
            f"{table} holds scores under the {describe_protocol(data['protocol'])}, not the full protocol "
            f"the paper's tables use; delete {table.parent} (it is trained again) or pass another --out"
        )
    return data


def run_method(
    dataset: str, method: str, seed: int, folder: Path, progress: bool, overrides: dict[str, Any]
) -> dict[str, float]:
    """Test table of one method at one seed: read back if finished, else train (resuming)."""
    table = folder / "table.json"
    if table.is_file():
        return {k.removeprefix("test/"): v for k, v in read_full(table, dataset)["test"].items()}
    from derd.config import apply_overrides, preset
    from derd.train import train

    cfg = apply_overrides(preset(dataset, method), {**overrides, "seed": seed})
    result = train(cfg, folder, progress=progress)
    return {k.removeprefix("test/"): v for k, v in result["test"].items()}


def run_reference(
    dataset: str, kind: str, seed: int, folder: Path, progress: bool, overrides: dict[str, Any]
) -> dict[str, float]:
    """Real-data reference: the student architecture trained on the teacher split (natural or PGD-AT)."""
    table = folder / "table.json"
    if table.is_file():
        return read_full(table, dataset)["test"]
    from derd.checkpoints import save_checkpoint
    from derd.config import apply_overrides, preset
    from derd.data import dataset_info, dataset_spec, load_split, make_loader
    from derd.device import resolve_device
    from derd.evaluate import eval_batch_size, evaluate
    from derd.teachers import train_teacher

    cfg = apply_overrides(preset(dataset), overrides)
    info = dataset_info(dataset, cfg.data.image_size)
    device = resolve_device(cfg.device)
    model = train_teacher(
        info,
        "natural" if kind == "nature_real" else "robust",
        cfg.student.arch,
        epochs=dataset_spec(dataset).teacher_epochs,
        data_root=cfg.data.root,
        seed=seed,
        device=device,
        progress=progress,
    )
    test = load_split(dataset, "test", cfg.data.root, image_size=cfg.data.image_size)
    batch = eval_batch_size(cfg.data.val_batch_size, info.image_shape, device)
    metrics = evaluate(
        model, make_loader(test, batch), "full", eps=info.eps, device=device, seed=seed, progress=progress
    )
    folder.mkdir(parents=True, exist_ok=True)
    save_checkpoint(
        folder / "student.pt",
        model,
        {
            "arch": cfg.student.arch,
            "dataset": dataset,
            "num_classes": info.num_classes,
            "kind": kind,
            "table": metrics,
        },
    )
    table.write_text(
        json.dumps(
            {
                "test": metrics,
                "protocol": protocol_record("full", info.eps),
                "arch": cfg.student.arch,
                "seed": seed,
            },
            indent=1,
        )
    )
    return metrics


def collect(
    dataset: str,
    seeds: list[int],
    out: Path,
    overrides: dict[str, Any] | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, list[dict[str, float]]]:
    """{row key: [test table per seed]} for every row of the three tables."""
    keys = list(dict.fromkeys(k for n in TABLES for k in rows_of_table(n)))
    results: dict[str, list[dict[str, float]]] = {}
    for key in keys:
        for seed in seeds:
            folder = out / key / f"seed{seed}"
            start = time.time()
            runner = run_reference if key in REFERENCES else run_method
            results.setdefault(key, []).append(runner(dataset, key, seed, folder, progress, overrides or {}))
            log(f"{key} seed {seed}: done in {time.time() - start:.0f} s ({folder})")
    return results


def mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def markdown(dataset: str, seeds: list[int], results: dict[str, list[dict[str, float]]]) -> str:
    """The three tables, ours (mean ± std over seeds) and the paper's rows where published."""
    paper = PAPER_ROWS.get(dataset, [])
    from derd.data import dataset_info

    parts = [
        f"Paper tables on {dataset}: test split, {describe_protocol(protocol_record('full', dataset_info(dataset).eps))}, "
        f"mean ± std over seeds {', '.join(map(str, seeds))}; preset budget, student "
        f"{_student(dataset)}.\n"
    ]
    for number, title in TABLES.items():
        lines = [
            f"**{title}**",
            "",
            "| method | " + " | ".join(header(c) for c in REPORTED) + " |",
            "|---" * (len(REPORTED) + 1) + "|",
        ]
        for key in rows_of_table(number):
            runs = results.get(key, [])
            cells = [
                mean_std([r[c] for r in runs]) if runs and all(c in r for r in runs) else "-"
                for c in REPORTED
            ]
            lines.append(f"| {label(key)} | " + " | ".join(cells) + " |")
        for table, name, row in paper:
            if table == number:
                cells = [f"{row[c]:.2f}" if c in row and not math.isnan(row[c]) else "-" for c in REPORTED]
                lines.append(f"| {name} | " + " | ".join(cells) + " |")
        notes = footnotes(k for k in rows_of_table(number) if k not in REFERENCES)
        parts.append("\n".join(lines) + "\n" + "".join(f"\n{note}\n" for note in notes))
    return "\n".join(parts)


def _student(dataset: str) -> str:
    from derd.config import preset

    return preset(dataset).student.arch


def save(out: Path, text: str, results: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "paper_tables.md").write_text(text)
    (out / "paper_tables.json").write_text(json.dumps(results, indent=1))
