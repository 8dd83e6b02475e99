"""Progress of a long loop: a tqdm bar on a terminal, plain lines at a bounded rate elsewhere.

A bar redraws itself with carriage returns; written to a file (a cluster's log, a Ray worker's
stderr) each redraw stays, and one bar becomes one line of many kilobytes. Off a terminal the
same calls therefore write a plain line at most every ``every_s`` seconds, and one at the end.
Every progress display in ``derd`` goes through ``progress_bar``.
"""

from __future__ import annotations

import sys
import time
from typing import Any, Iterable, Iterator, TextIO

PLAIN_EVERY_S = 30.0  # off a terminal: at most one line per this many seconds (plus the last)


class PlainProgress:
    """The part of tqdm's interface the callers use (iterate, ``update``, ``set_postfix``, ``close``,
    ``with``), written as whole lines: ``desc: n/total (elapsed s) key=value ...``.

    A line is written when ``every_s`` seconds have passed since the last one (so a loop whose
    steps are slower than that writes one line a step) and, if the loop moved since, at
    ``close``; a bar that tqdm would erase at its end (``leave=False``) writes its last line only
    if it wrote one before."""

    def __init__(
        self,
        iterable: Iterable | None = None,
        *,
        total: int | None = None,
        initial: int = 0,
        desc: str = "",
        leave: bool = True,
        stream: TextIO | None = None,
        every_s: float = PLAIN_EVERY_S,
    ) -> None:
        self.iterable = iterable
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.total, self.n, self.desc, self.leave = total, initial, desc, leave
        self.stream, self.every_s = stream, every_s
        self.start = self.last = time.monotonic()
        self.written_n: int | None = None  # the count the last line showed
        self.postfix = ""
        self.closed = False

    def __iter__(self) -> Iterator:
        try:
            for item in self.iterable or ():
                yield item
                self.update(1)
        finally:
            self.close()

    def __enter__(self) -> PlainProgress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def set_postfix(self, **values: Any) -> None:
        """What the next line shows after the count (as tqdm's postfix)."""
        self.postfix = " ".join(f"{k}={v}" for k, v in values.items())

    def update(self, n: int = 1) -> None:
        self.n += n
        if time.monotonic() - self.last >= self.every_s:
            self._write()

    def close(self) -> None:
        """The last line (when the loop moved since the last one), once."""
        if self.closed:
            return
        self.closed = True
        if self.n != self.written_n and (self.leave or self.written_n is not None):
            self._write()

    def _write(self) -> None:
        if self.stream is None:
            return
        now = time.monotonic()
        count = f"{self.n}/{self.total}" if self.total is not None else str(self.n)
        line = f"{self.desc}: {count} ({now - self.start:.0f} s)" + (
            f" {self.postfix}" if self.postfix else ""
        )
        self.stream.write(line + "\n")
        self.stream.flush()
        self.last, self.written_n = now, self.n


def _is_terminal(stream: TextIO) -> bool:
    """Whether ``stream`` is a terminal (False for a closed stream or an object without ``isatty``)."""
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


def progress_bar(
    iterable: Iterable | None = None,
    *,
    total: int | None = None,
    initial: int = 0,
    desc: str = "",
    enabled: bool = True,
    leave: bool = True,
    stream: TextIO | None = None,
    every_s: float = PLAIN_EVERY_S,
):
    """A progress display over ``iterable`` (or counted by ``update`` up to ``total``) on ``stream``
    (default: stderr, read at the call): tqdm when the stream is a terminal, else ``PlainProgress``;
    with ``enabled=False`` it shows nothing (the same object, silent)."""
    stream = sys.stderr if stream is None else stream
    if not enabled:
        return PlainProgress(iterable, total=total, initial=initial, desc=desc, leave=leave, stream=None)
    if _is_terminal(stream):
        from tqdm import tqdm

        return tqdm(iterable, total=total, initial=initial, desc=desc, leave=leave, file=stream)
    return PlainProgress(
        iterable, total=total, initial=initial, desc=desc, leave=leave, stream=stream, every_s=every_s
    )
