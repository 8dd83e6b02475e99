"""Preflight checks: everything a user can get wrong is caught before anything is written."""
from __future__ import annotations

import socket
import urllib.error
import urllib.request
from urllib.parse import urlparse

from derd.errors import UserError


def check_mlflow_uri(uri: str | None, timeout: float = 5.0) -> None:
    """An http(s) tracking server must answer its /health endpoint."""
    if uri is None or urlparse(uri).scheme not in ("http", "https"):
        return
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as resp:
            if resp.status >= 400:
                raise OSError(f"HTTP {resp.status}")
    except (OSError, urllib.error.URLError, ValueError) as err:
        raise UserError(f"MLflow tracking server {uri} is unreachable ({err}); start it or drop --mlflow-uri to use the local SQLite store") from None


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
