"""Feedback of a run: progress (a tqdm bar on a terminal, periodic lines in logs), a JSON-lines
log and a plot of the loss curves."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from .._atomic import write_text_atomic
from ..progress import progress_bar

logger = logging.getLogger(__name__)


class RunMonitor:
    """Progress bar (step, loss parts, lr, images/s, ETA) and ``log.jsonl`` of one process.

    Only the main process shows and writes anything (``enabled=False`` elsewhere). On resume
    the log is cut back to the resumed step, so it never holds steps of a lost future.

    Args:
        log_path: the JSON-lines file.
        total: the last step of the run.
        start: the step the run starts (or resumes) at.
        enabled: whether this process reports.
        progress: show the tqdm bar.
        desc: label of the bar.
    """

    def __init__(self, log_path: str | os.PathLike[str], total: int, start: int = 0, *,
                 enabled: bool = True, progress: bool = True, desc: str = "train") -> None:
        self.log_path = Path(log_path)
        self.enabled = enabled
        self._last_time = time.perf_counter()
        self._last_step = start
        self._images = 0
        self.bar = progress_bar(total=total, initial=start, desc=desc, unit="step", dynamic_ncols=True,
                                disable=not (enabled and progress))
        if enabled:
            self._truncate(start)

    def _truncate(self, step: int) -> None:
        if not self.log_path.is_file():
            return
        kept = [line for line in self.log_path.read_text(encoding="utf-8").splitlines()
                if line.strip() and json.loads(line).get("step", 0) <= step]
        write_text_atomic(self.log_path, "".join(line + "\n" for line in kept))

    def advance(self, images: int) -> None:
        """One optimiser step on ``images`` images (global batch) is done."""
        self._images += images
        self.bar.update(1)

    def log(self, step: int, epoch: float, lr: float, losses: dict[str, float], **extra: Any) -> dict[str, Any]:
        """Write one log record (and show it on the bar); returns the record."""
        now = time.perf_counter()
        rate = self._images / max(now - self._last_time, 1e-9)
        self._last_time, self._last_step, self._images = now, step, 0
        record = {"step": step, "epoch": round(epoch, 4), "lr": lr, **losses, "images_per_s": round(rate, 2),
                  "time": time.time(), **extra}
        if self.enabled:
            with self.log_path.open("a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
            self.bar.set_postfix({**{k: f"{v:.4g}" for k, v in losses.items()}, "lr": f"{lr:.3g}",
                                  "img/s": f"{rate:.1f}"}, refresh=False)
        return record

    def close(self) -> None:
        self.bar.close()


def read_log(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The records of a ``log.jsonl``."""
    p = Path(path)
    if not p.is_file():
        return []
    return [json.loads(line) for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]


def plot_losses(log_path: str | os.PathLike[str], out_path: str | os.PathLike[str],
                title: str = "training loss") -> Path | None:
    """Plot every ``loss*`` curve of a log against the step (matplotlib Agg canvas, no pyplot).

    Returns the written path, or ``None`` when matplotlib is missing or the log is empty.
    """
    records = read_log(log_path)
    keys = sorted({k for r in records for k in r if k.startswith("loss")})
    if not records or not keys:
        return None
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        logger.warning("matplotlib is not installed: no loss plot (pip install matplotlib)")
        return None
    from .._atomic import atomic_path

    fig = Figure(figsize=(7, 4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for key in keys:
        pts = [(r["step"], r[key]) for r in records if key in r]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], label=key)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out = Path(out_path)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format=out.suffix.lstrip(".") or "png", dpi=110)
    return out
