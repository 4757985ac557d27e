"""Run dirs: config, tokenizer copy, and TF checkpoints (the latest `--keep` plus the best by valid ppl).

RUN_DIR/
    config.json        RunConfig: rebuilds the model and the data pipeline
    tokenizer.model    copy of the data dir's sentencepiece model
    checkpoints/       tf.train.CheckpointManager: ckpt-STEP.{index,data-*}, `checkpoint` index file
    best/              the checkpoint with the lowest validation perplexity
    metrics.jsonl      one JSON object per log interval / evaluation
    tb/                TensorBoard event files
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import tensorflow as tf

from lmcli.config import RunConfig
from lmcli.model import LanguageModel, build_model
from lmcli.runtime.errors import OutputError, RunDirError
from lmcli.runtime.fileio import describe_os_error


@dataclass(frozen=True)
class RunPaths:
    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.json"

    @property
    def tokenizer(self) -> Path:
        return self.root / "tokenizer.model"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def best(self) -> Path:
        return self.root / "best"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def tensorboard(self) -> Path:
        return self.root / "tb"

    def exists(self) -> bool:
        return self.config.exists()

    def clear(self) -> None:
        for p in (self.checkpoints, self.best, self.tensorboard):
            shutil.rmtree(p, ignore_errors=True)
        for p in (self.metrics, self.tokenizer, self.config):  # config.json last: it marks a run dir
            p.unlink(missing_ok=True)


class TrainingState:
    """Everything a checkpoint holds: model, optimizer, position in the data and carried LSTM state."""

    def __init__(self, model: LanguageModel, optimizer, carry_shape: Optional[tuple[int, int]],
                 sampler_state: Optional[list] = None) -> None:
        self.model, self.optimizer = model, optimizer
        self.step = tf.Variable(0, dtype=tf.int64, trainable=False)
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False)
        self.batch = tf.Variable(0, dtype=tf.int64, trainable=False)  # next batch inside the epoch
        self.best = tf.Variable(float("inf"), dtype=tf.float64, trainable=False)  # best valid ppl
        self.lr_decays = tf.Variable(0, dtype=tf.int64, trainable=False)  # plateau: epoch ends without progress
        layers = model.num_layers if carry_shape else 0
        self.carry = [tf.Variable(tf.zeros(carry_shape), trainable=False) for _ in range(2 * layers)]
        self.checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, step=self.step,
                                              epoch=self.epoch, batch=self.batch, best=self.best,
                                              lr_decays=self.lr_decays,
                                              carry=self.carry, sampler=list(sampler_state or []))

    def set_carry(self, state) -> None:
        for var, value in zip(self.carry, [t for hc in state for t in hc]):
            var.assign(value)

    def get_carry(self):
        return [(self.carry[2 * i], self.carry[2 * i + 1]) for i in range(len(self.carry) // 2)]


def managers(state: TrainingState, paths: RunPaths, keep: int):
    latest = tf.train.CheckpointManager(state.checkpoint, str(paths.checkpoints), max_to_keep=keep,
                                        checkpoint_name="ckpt")
    best = tf.train.CheckpointManager(state.checkpoint, str(paths.best), max_to_keep=1,
                                      checkpoint_name="ckpt")
    return latest, best


def save_checkpoint(manager: tf.train.CheckpointManager, step: int) -> str:
    """`manager.save(step)`; a failed write is an OutputError and leaves no `ckpt-STEP_temp` dir behind.

    TF reports a full disk as ResourceExhaustedError ('...; No space left on device'). A failed save
    changes neither the earlier checkpoints nor the manager's `checkpoint` index file.
    """
    try:
        return manager.save(checkpoint_number=step)
    except (OSError, tf.errors.OpError) as e:
        for tmp in Path(manager.directory).glob(f"*-{step}_temp*"):
            shutil.rmtree(tmp, ignore_errors=True)
        what = f"cannot write checkpoint {step} in {manager.directory}"
        if isinstance(e, OSError):
            raise OutputError(describe_os_error(what, e)) from None
        no_space = "no space left on device" in str(e).lower()
        raise OutputError(f"{what}: {'no space left on device' if no_space else short_error(e)}") from None


def short_error(e: BaseException) -> str:
    """The first line of an error, without TF's '{{function_node ...}}' prefix and '[Op:...]' suffix."""
    text = str(e).strip()
    first = text.splitlines()[0] if text else ""
    first = re.sub(r"^\{\{function_node [^}]*\}\}\s*", "", first)
    first = re.sub(r"\s*\[Op:\w+\]$", "", first)
    return first or type(e).__name__


def resolve_checkpoint(paths: RunPaths, which: str = "best") -> str:
    """The checkpoint prefix for 'best' (falls back to latest), 'latest', or a step number."""
    latest = tf.train.latest_checkpoint(str(paths.checkpoints))
    if which == "latest":
        found = latest
    elif which == "best":
        found = tf.train.latest_checkpoint(str(paths.best)) or latest
    elif which.isdigit():
        found = next((str(d / f"ckpt-{which}") for d in (paths.checkpoints, paths.best)
                      if (d / f"ckpt-{which}.index").exists()), None)
    else:
        raise RunDirError(f"--checkpoint must be best, latest or a step number, got '{which}'")
    if not found:
        raise RunDirError(f"no {which} checkpoint in {paths.root} (train it first)")
    return found


def checkpoint_step(prefix: str) -> int:
    return int(prefix.rsplit("-", 1)[1])


def load_model(run_dir: Path, which: str = "best") -> tuple[LanguageModel, RunConfig, int]:
    """Rebuild the model from config.json and restore its weights. Returns (model, config, step)."""
    paths = RunPaths(Path(run_dir))
    if not paths.root.is_dir():
        raise RunDirError(f"{run_dir} is not a directory")
    cfg = RunConfig.load(paths.config)
    prefix = resolve_checkpoint(paths, which)
    model = build_model(cfg.model)
    try:
        tf.train.Checkpoint(model=model).restore(prefix).expect_partial().assert_existing_objects_matched()
    except Exception as e:  # noqa: BLE001 - any failure to read a checkpoint means it is unusable
        raise RunDirError(f"cannot restore checkpoint {prefix}: {short_error(e)}") from None
    return model, cfg, checkpoint_step(prefix)
