"""Ray nodes started by the real CLI on this machine, for the cluster tests and ``benchmarks/soak.py``.

A head (``ray start --head``) and worker nodes (``ray start --address``), each with its own CPUs, its own
temporary folder and its own ports, all on the loopback address, with Ray's default authentication: the
head turns token authentication on because its machine holds a token (``ray get-auth-token --generate``
writes one into ``HOME``, a folder of the caller's, so that the user's ``~/.ray`` is never read or
written). Every node is stopped, or killed as a lost machine would be, by its process ids: the
``ray start --block`` process and its descendants (GCS, raylet, agents, workers); never ``ray stop``,
which would stop every Ray on the machine.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from tuning.processes import terminate

RAY_CLI = str(Path(sys.executable).parent / "ray")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cluster_env(home: Path, repo: Path) -> dict[str, str]:
    """This machine's environment with HOME in ``home``, without the user's Ray address or
    authentication settings, and the repository importable (trials unpickle its functions)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_AUTH", "RAY_ADDRESS"))}
    env.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)  # a worker node needs Ray's multi-machine mode
    return {**env, "HOME": str(home), "PYTHONPATH": str(repo)}


class RayNode:
    """One Ray node: ``ray start [--head | --address A] --block`` in its own session."""

    # Each node binds to an address of its own in 127/8 (all loopback on Linux), never 127.0.0.1 itself:
    # in Ray's multi-machine mode, which a worker node needs, ``ray start`` replaces localhost, 127.0.0.1
    # and ::1 (as --node-ip-address and in --address) by the machine's network address.

    def __init__(
        self,
        root: Path,
        name: str,
        env: dict[str, str],
        *,
        num_cpus: int,
        head: str | None = None,
        ip: str,
    ):
        self.name, self.env, self.head, self.ip = name, env, head, ip
        self.log = root / f"{name}.log"
        # short: Ray's socket paths (at most 107 bytes) live under it
        self.temp_dir = Path(tempfile.mkdtemp(prefix=f"derd-{name}-"))
        self.port = free_port() if head is None else None
        args = [
            "--block",
            "--node-ip-address",
            ip,
            "--temp-dir",
            str(self.temp_dir),
            "--num-cpus",
            str(num_cpus),
            "--num-gpus",
            "0",
            "--dashboard-agent-listen-port",
            str(free_port()),
            "--dashboard-agent-grpc-port",
            str(free_port()),
            "--runtime-env-agent-port",
            str(free_port()),
            "--metrics-export-port",
            str(free_port()),
            "--disable-usage-stats",
        ]
        if head is None:
            args = [
                "--head",
                "--port",
                str(self.port),
                "--include-dashboard",
                "false",
                "--dashboard-port",
                str(free_port()),
                *args,
            ]
        else:
            args = ["--address", head, *args]
            # joined by HOST:PORT, ``ray start`` sends the machine's token only with RAY_AUTH_MODE=token
            env = {**env, "RAY_AUTH_MODE": "token"}
        with self.log.open("w") as log:
            self.proc = subprocess.Popen(
                [RAY_CLI, "start", *args],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.started = psutil.Process(self.proc.pid).create_time()

    @property
    def address(self) -> str:
        return f"{self.ip}:{self.port}" if self.head is None else self.head

    def wait_started(self, timeout: float = 120) -> RayNode:
        deadline = time.time() + timeout
        while "Ray runtime started" not in self.log.read_text():
            if self.proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"ray node {self.name} did not start:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.5)
        return self

    def processes(self) -> list[psutil.Process]:
        """The node's processes: ``ray start`` and its descendants (the raylet's workers among them)."""
        try:
            root = psutil.Process(self.proc.pid)
            if root.create_time() != self.started:
                return []
            return [root, *root.children(recursive=True)]
        except psutil.Error:
            return []

    def node_id(self) -> str:
        """The node's id, as its raylet was given it (``--node_id``)."""
        for proc in self.processes():
            try:
                args = proc.cmdline()
            except psutil.Error:
                continue
            if args and args[0].endswith("/raylet"):
                return next(a.split("=", 1)[1] for a in args if a.startswith("--node_id="))
        raise RuntimeError(f"ray node {self.name} has no raylet")

    def trial_workers(self) -> list[psutil.Process]:
        """The node's workers that run a Tune trial (their process title names the trainable's actor)."""
        found = []
        for proc in self.processes():
            try:
                title = " ".join(proc.cmdline())
            except psutil.Error:
                continue
            if title.startswith("ray::") and "ImplicitFunc" in title:
                found.append(proc)
        return found

    def kill(self) -> int:
        """``kill -9`` of every process of the node at once, as a machine that disappears; returns how many."""
        procs = self.processes()
        for proc in procs:
            try:
                proc.send_signal(signal.SIGKILL)
            except psutil.Error:
                pass
        psutil.wait_procs(procs, timeout=10)
        self.proc.poll()
        return len(procs)

    def stop(self, grace: float = 10) -> None:
        """SIGTERM to the node's processes, SIGKILL to those left after ``grace`` seconds; its folder removed."""
        terminate(self.processes(), grace)
        self.proc.poll()
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def trial_of(proc: psutil.Process, search: Path) -> int | None:
    """The Optuna number of the trial a worker runs, or None: its working folder (in its node's temporary
    folder) has the name of the trial's folder in the search's storage (``<out>/tune/session-N/``), whose
    ``params.json`` holds the trial's config (a long config cuts the folder's name short of the number)."""
    from tuning.searcher import TRIAL_NUMBER

    try:
        name = Path(proc.cwd()).name
    except psutil.Error:
        return None
    for params in (search / "tune").glob(f"session-*/{name}/params.json"):
        try:
            return int(json.loads(params.read_text())[TRIAL_NUMBER])
        except (OSError, ValueError, KeyError):
            return None
    return None


def generate_token(env: dict[str, str]) -> str:
    """A token in ``$HOME/.ray/auth_token`` (the head then requires it, as Ray's default does)."""
    subprocess.run(
        [RAY_CLI, "get-auth-token", "--generate"], env=env, check=True, capture_output=True, timeout=60
    )
    return (Path(env["HOME"]) / ".ray" / "auth_token").read_text()
