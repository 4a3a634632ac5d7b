"""Resumable stages: each step of the reproduction owns a folder and marks it complete.

A :class:`Stage` is a name, a folder and a *spec*: the JSON-serialisable settings its output
depends on (including the keys of the stages it builds on). When the stage finishes,
``done.json`` is written atomically into its folder with the spec, its key (a hash of the
spec), the result and the time taken. Running the pipeline again then

* skips a stage whose ``done.json`` has the same key (its recorded result is reused);
* refuses a stage whose ``done.json`` has another key (it was made with other settings),
  naming the settings that differ, instead of silently mixing runs;
* re-runs a stage whose folder has no ``done.json`` (it was interrupted); training stages
  then continue from their last checkpoint (``resume=True``).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from .._atomic import write_text_atomic
from ..errors import BTNetError, ConfigError

DONE = "done.json"
MARKER_VERSION = 1


class StageInterrupted(BTNetError):
    """A stage stopped early (SIGINT/SIGTERM); running the same command again resumes it.

    Attributes:
        signal: the signal number that stopped it (``None``: unknown).
    """

    def __init__(self, message: str, signal: int | None = None) -> None:
        super().__init__(message)
        self.signal = signal


def spec_key(spec: dict[str, Any]) -> str:
    """A short stable hash of a JSON-serialisable spec."""
    text = json.dumps(spec, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


@dataclass(frozen=True)
class Stage:
    """One resumable step.

    Attributes:
        name: short identifier (``trunk_hr``, ``branch_r14``, ``eval_bt`` ...).
        title: what the step does, for progress lines.
        folder: where its outputs and ``done.json`` go.
        spec: the settings its output depends on (JSON-serialisable).
    """

    name: str
    title: str
    folder: Path
    spec: dict[str, Any]

    @property
    def key(self) -> str:
        """Hash of :attr:`spec`; downstream stages include it in their own spec."""
        return spec_key(self.spec)

    @property
    def marker(self) -> Path:
        """The ``done.json`` file."""
        return self.folder / DONE


def _differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    keys = sorted(set(old) | set(new))
    return [k for k in keys if json.dumps(old.get(k), sort_keys=True, default=str)
            != json.dumps(new.get(k), sort_keys=True, default=str)]


def completed(stage: Stage) -> dict[str, Any] | None:
    """The marker of a completed stage (``result``, ``seconds``, ``spec`` ...), ``None`` if it
    has not completed.

    Raises:
        ConfigError: the folder holds a stage completed with other settings, or an unreadable
            marker.
    """
    if not stage.marker.is_file():
        return None
    try:
        record = json.loads(stage.marker.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise ConfigError(f"{stage.marker} is unreadable ({err}); delete it to redo the stage") from None
    if not isinstance(record, dict) or "key" not in record:
        raise ConfigError(f"{stage.marker} is not a stage marker; delete it to redo the stage")
    if record["key"] != stage.key:
        diff = _differences(record.get("spec") or {}, stage.spec)
        raise ConfigError(
            f"{stage.folder} holds the stage {stage.name!r} completed with other settings "
            f"(differing: {', '.join(diff) or 'unknown'}); choose another --out folder, or delete "
            f"{stage.folder} (and the stages after it) to redo it")
    return record


def mark_done(stage: Stage, result: dict[str, Any], seconds: float) -> None:
    """Write ``done.json`` (atomically) for a finished stage."""
    record = {"version": MARKER_VERSION, "stage": stage.name, "key": stage.key, "spec": stage.spec,
              "result": result, "seconds": round(seconds, 2),
              "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    write_text_atomic(stage.marker, json.dumps(record, indent=2, sort_keys=True, default=str) + "\n")


class StageRunner:
    """Runs stages in order with ``[i/n]`` progress lines, skipping completed ones.

    ``timings`` holds the seconds of the stages run now; ``recorded`` those of every stage
    (as recorded when it ran); ``skipped`` the names of the stages reused.

    Args:
        total: number of stages planned (for the ``[i/n]`` counter).
        stream: where progress lines go; ``None`` is silent.
    """

    def __init__(self, total: int, stream: TextIO | None = None) -> None:
        self.total, self.stream, self.index = total, stream, 0
        self.timings: dict[str, float] = {}
        self.recorded: dict[str, float] = {}
        self.skipped: list[str] = []

    def _say(self, text: str) -> None:
        if self.stream is not None:
            print(text, file=self.stream, flush=True)

    def run(self, stage: Stage, work: Callable[[Path, bool], dict[str, Any]]) -> dict[str, Any]:
        """Run ``work(folder, resume)`` unless the stage already completed; return its result.

        ``resume`` is True when the folder exists without a marker (an interrupted run).
        ``work`` raises :class:`StageInterrupted` when it stopped early; no marker is written then.
        """
        self.index += 1
        head = f"[{self.index}/{self.total}] {stage.title}"
        done = completed(stage)
        if done is not None:
            self._say(f"{head}: complete in {stage.folder}, skipped")
            self.skipped.append(stage.name)
            self.recorded[stage.name] = float(done.get("seconds") or 0.0)
            return dict(done.get("result") or {})
        resume = stage.folder.is_dir()
        self._say(f"{head}{' (resuming)' if resume else ''} -> {stage.folder}")
        start = time.perf_counter()
        stage.folder.mkdir(parents=True, exist_ok=True)
        result = work(stage.folder, resume)
        seconds = time.perf_counter() - start
        mark_done(stage, result, seconds)
        self.timings[stage.name] = self.recorded[stage.name] = seconds
        self._say(f"{head}: done in {seconds:.0f} s")
        return result
