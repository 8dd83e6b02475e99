"""Preflight checks: everything a user can get wrong is caught before anything is written."""
from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any

from derd.errors import UserError
from derd.records import SearchFolder


def check_ray_address(address: str | None, timeout: float = 5.0) -> None:
    """A Ray head at HOST:PORT (or ray://HOST:PORT) must accept a TCP connection."""
    if address in (None, "", "auto", "local"):
        return
    target = address.split("://", 1)[-1]
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise UserError(f"--address {address!r} is not HOST:PORT (e.g. 10.0.0.5:6379) or auto")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except OSError as err:
        raise UserError(f"no Ray cluster answers at {address} ({err}); start one with 'ray start --head' or fix --address") from None


def check_cluster_resources(cpus_per_trial: float, gpus_per_trial: float) -> None:
    """A trial must fit on one node of the (already connected) Ray cluster."""
    import ray

    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    max_gpus = max((r.get("GPU", 0) for r in nodes), default=0)
    max_cpus = max((r.get("CPU", 0) for r in nodes), default=0)
    if gpus_per_trial > max_gpus:
        raise UserError(
            f"--gpus-per-trial {gpus_per_trial:g} is more than any node has ({max_gpus:g} GPUs); "
            f"lower it (fractions such as 0.5 share a GPU) or add GPU nodes"
        )
    if cpus_per_trial > max_cpus:
        raise UserError(f"--cpus-per-trial {cpus_per_trial:g} is more than any node has ({max_cpus:g} CPUs); lower it")


def check_search_folder(folder: SearchFolder) -> dict[str, Any]:
    """The record of a search to resume; one clear error when the folder holds none, was moved, or its
    driver still runs."""
    out, record_file = folder.root, folder.record
    if not record_file.is_file():
        if out.is_dir() and folder.space.is_file():
            raise UserError(f"{out} holds a search from before search records ({record_file.name} is missing); "
                            f"start a new search in another --out")
        raise UserError(f"nothing to resume in {out}: no {record_file.name} (the search never started there); "
                        f"start it without --resume")
    try:
        record = json.loads(record_file.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise UserError(f"{record_file} is unreadable ({err}); start a new search in another --out") from None
    if Path(record.get("out", out)).resolve() != out.resolve():
        raise UserError(f"{out} was moved from {record['out']}; its MLflow store still points there: run "
                        f"python analysis/relocate.py --out {out} first")
    pid = record.get("driver_pid")
    if driver_alive(pid):
        raise UserError(f"a search driver (pid {pid}) is still running on this folder; stop it (Ctrl-C) or wait, "
                        f"then resume")
    return record


def driver_alive(pid: int | None) -> bool:
    """Whether a search driver with this pid still runs (Linux /proc; elsewhere assume not)."""
    if not pid or pid == os.getpid():
        return False
    try:
        return b"search.py" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def teacher_preflight(plan, n_images: int = 256) -> tuple[dict[str, dict[str, float]], float]:
    """Each teacher's clean and PGD_S accuracy on the first ``n_images`` val images, printed before
    any GPU-hour is spent, and the feasibility threshold: ``min_clean_fraction`` of the natural
    teacher's clean accuracy (of the robust teacher's when the search uses no natural one)."""
    import torch

    from derd.config import from_dict
    from derd.data import dataset_info, first_n, load_split, make_loader
    from derd.device import resolve_device
    from derd.evaluate import Protocol, eval_batch_size, evaluate, markdown_table

    cfg = from_dict(plan.base_config)
    info = dataset_info(cfg.data.dataset, cfg.data.image_size)
    device = resolve_device(cfg.device)
    val = first_n(load_split(info.name, "val", cfg.data.root, image_size=cfg.data.image_size), n_images)
    loader = make_loader(val, eval_batch_size(cfg.data.val_batch_size, info.image_shape, device))
    protocol = Protocol("preflight", ("clean_acc", "pgd_acc"), n_images, "fast")
    tables = {}
    for kind in ("natural", "robust"):
        model = getattr(plan.experts, kind)
        if model is not None:
            tables[kind] = evaluate(model.to(device), loader, protocol, eps=info.eps, device=device, seed=cfg.seed)
    plan.experts.to(torch.device("cpu"))  # back in place: trials receive them pickled, and a CPU node has no CUDA
    print(f"teachers on the first {len(val)} val images (eps {info.eps:.4f}):\n"
          + markdown_table({f"{kind} teacher": t for kind, t in tables.items()}), flush=True)
    reference = tables.get("natural", tables.get("robust"))
    threshold = plan.space.min_clean_fraction * reference["clean_acc"]
    print(f"feasible trials: val clean accuracy >= {threshold:.2f} ({plan.space.min_clean_fraction:g} x the "
          f"{'natural' if 'natural' in tables else 'robust'} teacher's {reference['clean_acc']:.2f})", flush=True)
    return tables, threshold
