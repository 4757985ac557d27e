"""What training writes about itself: metrics.jsonl + TensorBoard, and the running sums behind each record.

The loop does not read the device every step: a step's outputs are kept as tensors (`Pending`) and fetched in
one copy at log points, checkpoints and progress refreshes. The NaN guard checks every kept step in order, so
it still names the step at which the loss stopped being finite.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import tensorflow as tf

from lmcli.runtime.errors import OutputError
from lmcli.runtime.fileio import atomic_write_text, describe_os_error
from lmcli.train.checkpoints import RunPaths

SKIP = ("state",)  # step outputs that are not metrics


class MetricsLog:
    """metrics.jsonl plus TensorBoard scalars. On resume, records after the restored step are dropped.

    Nothing is written before `open()` (the run's first checkpoint): records wait in memory, so a run that
    fails before it leaves the run dir as it was.
    """

    def __init__(self, paths: RunPaths, resume_step: int) -> None:
        self.paths, self.path, self.resume_step = paths, paths.metrics, resume_step
        self.waiting: list[dict] = []
        self.writer = None

    def open(self) -> None:
        if self.path.exists():
            kept = [ln for ln in self.path.read_text().splitlines() if _step_of(ln) <= self.resume_step]
            atomic_write_text(self.path, "".join(ln + "\n" for ln in kept))
        self.writer = tf.summary.create_file_writer(str(self.paths.tensorboard))
        for record in self.waiting:
            self.write(record)
        self.waiting = []

    def write(self, record: dict) -> None:
        if self.writer is None:
            self.waiting.append(record)
            return
        try:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")
        except OSError as e:
            raise OutputError(describe_os_error(f"cannot write {self.path}", e)) from None
        with self.writer.as_default(step=record["step"]):
            for k, v in record.items():
                if k not in ("step", "epoch", "event") and isinstance(v, (int, float)):
                    tf.summary.scalar(f"{record['event']}/{k}", v)
        self.writer.flush()


@dataclass
class Window:
    """Token-weighted running means of the step outputs since the last metrics record.

    `sums` keys (the loss, its parts, the gradient norm) are averaged over tokens; `facts` (term weights,
    reports, the learning rate) keep their latest value.
    """

    sums: dict = field(default_factory=dict)
    facts: dict = field(default_factory=dict)
    tokens: float = 0.0
    t: float = field(default_factory=time.monotonic)

    def add(self, values: dict[str, float], additive: set[str]) -> None:
        tokens = values["tokens"]
        self.tokens += tokens
        for k, v in values.items():
            if k in additive:
                self.sums[k] = self.sums.get(k, 0.0) + v * tokens
            elif k != "tokens":
                self.facts[k] = v

    def mean(self, key: str) -> float:
        return self.sums.get(key, float("nan")) / max(self.tokens, 1.0)

    @property
    def perplexity(self) -> float:
        return math.exp(min(self.mean("strategy_loss"), 50.0))

    @property
    def rate(self) -> float:
        return self.tokens / max(time.monotonic() - self.t, 1e-9)

    def record(self) -> dict[str, Any]:
        out = {k: self.mean(k) for k in self.sums}
        out.update(self.facts)
        out.update(perplexity=self.perplexity, tokens_per_s=self.rate)
        return out


class Pending:
    """Step outputs not yet read from the device, in step order."""

    def __init__(self) -> None:
        self.steps: list[int] = []
        self.outputs: list[dict] = []

    def add(self, step: int, out: dict, extra: dict) -> None:
        self.steps.append(step)
        self.outputs.append({**{k: v for k, v in out.items() if k not in SKIP}, **extra})

    def __len__(self) -> int:
        return len(self.steps)

    def fetch(self) -> list[tuple[int, dict[str, float]]]:
        """[(step, {name: float})] in step order, in one device-to-host copy; the buffer is emptied."""
        if not self.outputs:
            return []
        keys = sorted(self.outputs[0])
        stacked = tf.stack([tf.stack([tf.cast(o[k], tf.float64) for k in keys]) for o in self.outputs]).numpy()
        rows = [(s, dict(zip(keys, map(float, r)))) for s, r in zip(self.steps, np.atleast_2d(stacked))]
        self.steps, self.outputs = [], []
        return rows


def _step_of(line: str) -> float:
    """The step of a metrics.jsonl record; a torn or blank line (a killed writer) sorts last and is dropped."""
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return float("inf")
