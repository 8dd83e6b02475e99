"""The local Ray processes a search driver starts, and their end when the driver dies.

When ``ray.init`` starts a local instance, its processes (GCS, raylet, the dashboard and
runtime-env agents, workers) are the driver's descendants. ``kill -9`` of the driver takes
GCS and the raylet down with it but leaves the agents running with nothing to serve. Two
guards, both by process id and start time (never by name, so no other Ray on the machine
is touched):

* a reaper (``python tuning/processes.py DRIVER_PID [PID ...]``, the PIDs being the driver's
  children before Ray started, which are not Ray's), in its own session and holding the read
  end of a pipe the driver writes nothing to, notes the driver's other descendants every half
  second; when the pipe closes (the driver ended, however it ended) it sends SIGTERM to
  those still alive, then SIGKILL after three seconds;
* a worker the raylet forked in the last half second before the kill is orphaned before the
  reaper saw it, so the driver also marks its environment (``MARK``, a token unique to this
  driver, which Ray's processes inherit) and the reaper ends the marked processes too, as
  Jenkins' process-tree killer does with ``BUILD_ID``;
* the driver writes its descendants into ``search.json``; ``--resume`` ends those still
  alive before it starts (if the reaper itself was killed too).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

Recorded = dict[int, float]  # pid -> process start time (psutil's create_time)
MARK = "DERD_SEARCH_DRIVER"  # environment variable naming the driver whose Ray processes these are


def descendants(pid: int | None = None) -> Recorded:
    """This process's (or ``pid``'s) descendants, with their start times."""
    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return {}
    out: Recorded = {}
    for child in children:
        try:
            out[child.pid] = child.create_time()
        except psutil.Error:
            continue
    return out


def marked(token: str) -> Recorded:
    """The processes (of any parent) whose environment carries ``MARK=token``, but this one.

    A process that rewrote its title over its environment (Ray's agents do) no longer shows the
    mark; those start with Ray, long before any kill, so the reaper has seen them already."""
    out: Recorded = {}
    if not token:
        return out
    for proc in psutil.process_iter(["environ", "create_time"]):
        if proc.pid != os.getpid() and (proc.info["environ"] or {}).get(MARK) == token:
            out[proc.pid] = proc.info["create_time"]
    return out


def end_processes(recorded: Recorded, grace: float = 3.0) -> int:
    """SIGTERM the recorded processes that still run (same pid, same start time), SIGKILL those left
    after ``grace`` seconds; returns how many were running."""
    alive = []
    for pid, started in recorded.items():
        try:
            proc = psutil.Process(int(pid))
            if abs(proc.create_time() - float(started)) < 1e-3 and proc.pid != os.getpid():
                alive.append(proc)
        except psutil.Error:
            continue
    terminate(alive, grace)
    return len(alive)


def terminate(procs: list, grace: float) -> None:
    """SIGTERM ``procs`` (``psutil.Process`` objects), SIGKILL those left after ``grace`` seconds, and
    wait for them to go."""
    for proc in procs:
        try:
            proc.terminate()
        except psutil.Error:
            pass
    _, left = psutil.wait_procs(procs, timeout=grace)
    for proc in left:
        try:
            proc.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(left, timeout=10)


def start_reaper() -> subprocess.Popen:
    """Start the reaper of this process's descendants; it ends them if this process dies. Stop it
    with ``stop_reaper`` once they have been shut down properly."""
    before = descendants()  # taken here, before Ray can start: those children are not Ray's
    os.environ[MARK] = f"{os.getpid()}-{time.time_ns()}"  # Ray's processes, started after this, inherit it
    return subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), str(os.getpid()), *map(str, before)],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def stop_reaper(reaper: subprocess.Popen) -> None:
    """After a clean shutdown: the reaper leaves (nothing of ours is left to end)."""
    os.environ.pop(MARK, None)
    reaper.terminate()
    try:
        reaper.wait(timeout=10)
    except subprocess.TimeoutExpired:
        reaper.kill()


def _reap(driver: int, before: set[int]) -> None:
    signal.signal(
        signal.SIGINT, signal.SIG_IGN
    )  # a Ctrl-C in the driver's terminal is the driver's to handle
    seen: Recorded = {}
    before = before | {os.getpid()}

    def watch() -> None:
        while True:
            seen.update({p: t for p, t in descendants(driver).items() if p not in before})
            time.sleep(0.5)

    threading.Thread(target=watch, daemon=True).start()
    sys.stdin.buffer.read()  # returns when the driver's end of the pipe closes: the driver ended
    token = os.environ.get(MARK, "")
    end_processes({**seen, **marked(token)})
    end_processes(marked(token))  # a worker forked while the others were ending


if __name__ == "__main__":
    _reap(int(sys.argv[1]), {int(p) for p in sys.argv[2:]})
