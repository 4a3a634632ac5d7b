"""Progress of long loops: a tqdm bar on a terminal, periodic log lines elsewhere.

tqdm redraws one line with carriage returns, which batch jobs and CI logs show as one huge line,
or (with ``disable=None``) not at all — ``btnet eval`` then prints nothing for minutes.
:func:`progress_bar` takes tqdm's arguments and returns a real tqdm bar when its stream is a
terminal; otherwise a :class:`LogProgress` that writes a plain line every ``interval`` seconds
(and a last one when the loop ends, if it wrote any)::

    embed 120/2400 batches (5 %), 12.3 s, ETA 3.9 min

The interval defaults to :data:`DEFAULT_INTERVAL` seconds, or ``$BTNET_PROGRESS_INTERVAL``.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, TextIO

__all__ = ["DEFAULT_INTERVAL", "LogProgress", "progress_bar"]

#: Seconds between two log lines when the stream is not a terminal.
DEFAULT_INTERVAL = 30.0
_ENV = "BTNET_PROGRESS_INTERVAL"


def _interval(value: float | None) -> float:
    if value is not None:
        return float(value)
    try:
        return float(os.environ.get(_ENV, DEFAULT_INTERVAL))
    except ValueError:
        return DEFAULT_INTERVAL


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):  # closed or not a file
        return False


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.1f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


class LogProgress:
    """The part of tqdm's interface the library uses, reporting by plain lines.

    A line is written when ``interval`` seconds have passed since the previous one (checked at
    each update), and a last line at :meth:`close` when any was written before, so short loops
    stay silent. ``interval=0`` writes a line at every update.
    """

    def __init__(self, iterable: Iterable | None = None, *, total: float | None = None, desc: str | None = None,
                 unit: str = "it", initial: float = 0, file: TextIO | None = None, interval: float | None = None,
                 disable: bool = False) -> None:
        self.iterable = iterable
        if total is None and iterable is not None:
            try:
                total = len(iterable)  # type: ignore[arg-type]
            except TypeError:
                total = None
        self.total, self.n, self.desc, self.unit = total, initial, desc or "", unit
        self.file, self.interval, self.disable = file, _interval(interval), disable
        self.postfix: dict[str, Any] = {}
        self.start = self._last = time.monotonic()
        self._initial, self._lines, self._closed = initial, 0, False

    # tqdm's interface ---------------------------------------------------------------
    def __iter__(self) -> Iterator[Any]:
        if self.iterable is None:
            raise TypeError("LogProgress made without an iterable cannot be iterated")
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def __len__(self) -> int:
        return int(self.total or 0)

    def __enter__(self) -> "LogProgress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def update(self, n: float = 1) -> None:
        """Count ``n`` more units; write a line when ``interval`` seconds have passed."""
        self.n += n
        if not self.disable and time.monotonic() - self._last >= self.interval:
            self._write()

    def set_postfix(self, ordered_dict: Mapping[str, Any] | None = None, refresh: bool = True, **kwargs: Any) -> None:
        """Values shown after the counts on the next line (``loss=1.23, lr=0.1``)."""
        self.postfix = {**(ordered_dict or {}), **kwargs}

    def set_description(self, desc: str | None = None, refresh: bool = True) -> None:
        self.desc = desc or ""

    def refresh(self) -> None:
        """Nothing to redraw: lines are written as time passes."""

    def write(self, text: str) -> None:
        print(text, file=self.file or sys.stderr, flush=True)

    def close(self) -> None:
        """Write a last line if any was written before (a long loop's end is worth a line)."""
        if self._closed:
            return
        self._closed = True
        if self._lines and not self.disable:
            self._write(done=True)

    # lines --------------------------------------------------------------------------
    def line(self, done: bool = False) -> str:
        """The current progress as one line."""
        elapsed = time.monotonic() - self.start
        unit = self.unit
        units = unit if unit.endswith("s") else f"{unit}es" if unit.endswith(("x", "ch", "sh")) else f"{unit}s"
        count = f"{self.n:g}/{self.total:g} {units}" if self.total else f"{self.n:g} {units}"
        parts = [f"{self.desc} {count}".strip()]
        if self.total:
            parts[0] += f" ({100 * self.n / self.total:.0f} %)"
        parts.append(_duration(elapsed))
        done_now = self.n - self._initial
        if not done and self.total and done_now > 0 and self.n < self.total:
            parts.append(f"ETA {_duration(elapsed / done_now * (self.total - self.n))}")
        if done:
            parts.append("done")
        if self.postfix:
            parts.append(" ".join(f"{k}={v}" for k, v in self.postfix.items()))
        return ", ".join(parts)

    def _write(self, done: bool = False) -> None:
        self._last = time.monotonic()
        self._lines += 1
        self.write(self.line(done))


def progress_bar(iterable: Iterable | None = None, *, disable: bool | None = False, file: TextIO | None = None,
                 interval: float | None = None, **kwargs: Any) -> Any:
    """A tqdm bar when ``file`` (default: stderr) is a terminal, else a :class:`LogProgress`.

    Takes tqdm's arguments (``total``, ``desc``, ``unit``, ``initial``, ``leave``, ...).
    ``disable=True`` shows nothing; ``False`` or ``None`` shows progress either way (unlike
    tqdm, where ``None`` hides it off a terminal: that is what this helper replaces).
    ``interval``: seconds between log lines off a terminal.
    """
    stream = file if file is not None else sys.stderr
    if disable:
        from tqdm.auto import tqdm

        return tqdm(iterable, disable=True, **kwargs)
    if _is_terminal(stream):
        from tqdm.auto import tqdm

        return tqdm(iterable, file=file, **kwargs)
    known = {k: kwargs[k] for k in ("total", "desc", "unit", "initial") if k in kwargs}
    return LogProgress(iterable, file=file, interval=interval, **known)
