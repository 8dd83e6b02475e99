"""The search's record, ``search.json``: name, dataset, tracking URI, its sessions and the Ray
processes of the driver that runs it. Written atomically (a kill never leaves half a file).

Each session of a search (the first run, each ``--resume`` that runs trials) is entered when
it starts, so a session whose driver is killed still counts; ``SessionClock`` keeps its wall
time current while it runs.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from ray.tune import Callback


def write_record(path: Path, record: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(record, indent=1))
    os.replace(tmp, path)


class SessionClock(Callback):
    """Opens a session in the record and keeps its wall time up to date: at most every ``every``
    seconds of trial results, and at ``close()``."""

    def __init__(self, path: Path, record: dict[str, Any], every: float = 10.0) -> None:
        self.path, self.record, self.every = path, record, every
        record.setdefault("sessions", []).append({"start": time.time(), "wall_s": 0.0})
        self.written = 0.0
        self.write()

    def write(self) -> None:
        session = self.record["sessions"][-1]
        session["wall_s"] = time.time() - session["start"]
        write_record(self.path, self.record)
        self.written = time.time()

    def on_trial_result(
        self, iteration: int, trials: list, trial, result: dict[str, Any], **info: Any
    ) -> None:
        if time.time() - self.written > self.every:
            self.write()

    def close(self) -> None:
        self.write()
