"""Progress reporting for long work: a rich bar on a terminal, plain periodic lines otherwise.

Library code takes a `Progress` factory and never decides where output goes; the CLI picks one.
Everything is written to stderr so that stdout stays free for `--json`.
"""

from __future__ import annotations

import sys
import time
from typing import Any, Optional, TextIO


def _fmt(fields: dict[str, Any]) -> str:
    parts = []
    for k, v in fields.items():
        if isinstance(v, float):
            v = f"{v:.4g}" if abs(v) < 1e5 else f"{v:.0f}"
        parts.append(f"{k}={v}")
    return " ".join(parts)


class Task:
    """One unit of tracked work (encoding a split, an epoch, an evaluation)."""

    def update(self, advance: float = 1, **fields: Any) -> None:  # pragma: no cover - interface
        pass

    def close(self) -> None:  # pragma: no cover - interface
        pass

    def __enter__(self) -> "Task":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Progress:
    """Silent reporter (`--quiet`); the base of the others."""

    def task(self, description: str, total: Optional[float] = None, completed: float = 0) -> Task:
        return Task()

    def log(self, message: str) -> None:
        pass


class PlainTask(Task):
    def __init__(self, out: TextIO, description: str, total: Optional[float], completed: float,
                 every: float) -> None:
        self.out, self.description, self.total, self.every = out, description, total, every
        self.done = completed
        self.start = time.monotonic()
        self.last = self.start
        self.fields: dict[str, Any] = {}

    def update(self, advance: float = 1, **fields: Any) -> None:
        self.done += advance
        self.fields.update(fields)
        now = time.monotonic()
        if now - self.last >= self.every:
            self.last = now
            self._line()

    def _line(self) -> None:
        total = f"/{self.total:.0f}" if self.total else ""
        extra = _fmt(self.fields)
        self.out.write(f"[{self.description}] {self.done:.0f}{total} {extra}".rstrip() + "\n")
        self.out.flush()

    def close(self) -> None:
        self._line()


class PlainProgress(Progress):
    """Periodic one-line reports, for batch logs and CI."""

    def __init__(self, out: TextIO = sys.stderr, every: float = 10.0) -> None:
        self.out, self.every = out, every

    def task(self, description: str, total: Optional[float] = None, completed: float = 0) -> Task:
        return PlainTask(self.out, description, total, completed, self.every)

    def log(self, message: str) -> None:
        self.out.write(message + "\n")
        self.out.flush()


class RichTask(Task):
    def __init__(self, owner: "RichProgress", description: str, total: Optional[float],
                 completed: float) -> None:
        self.owner = owner
        self.id = owner.bar.add_task(description, total=total, completed=completed, info="")

    def update(self, advance: float = 1, **fields: Any) -> None:
        if fields:
            self.owner.bar.update(self.id, advance=advance, info=_fmt(fields))
        else:
            self.owner.bar.update(self.id, advance=advance)

    def close(self) -> None:
        self.owner.bar.stop_task(self.id)


class RichProgress(Progress):
    """A live rich bar with rate and ETA, on a terminal."""

    def __init__(self, out: TextIO = sys.stderr) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
        from rich.progress import Progress as Bar

        self.console = Console(file=out)
        self.bar = Bar(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                       TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
                       TextColumn("{task.fields[info]}"), console=self.console, transient=False)
        self.bar.start()

    def task(self, description: str, total: Optional[float] = None, completed: float = 0) -> Task:
        return RichTask(self, description, total, completed)

    def log(self, message: str) -> None:
        self.console.print(message, markup=False, highlight=False)

    def stop(self) -> None:
        self.bar.stop()


def make_progress(quiet: bool = False, out: TextIO = sys.stderr) -> Progress:
    """Pick the reporter: nothing when quiet, a bar on a terminal, plain lines elsewhere."""
    if quiet:
        return Progress()
    if out.isatty():
        return RichProgress(out)
    return PlainProgress(out)
