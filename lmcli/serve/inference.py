"""One interface over a run dir (Keras model + checkpoint) and an export dir (plain SavedModel).

Both give eval and generate the same four operations, so results are identical for one checkpoint:
    zero_state(B)                          -> state, a list of (h (B, H), c (B, H)) per layer
    score(inputs, labels, mask, state)     -> {nll (B, T), nll_sum, tokens, top1, top5, state}
    prefill(ids (B, T), mask (B, T))       -> (log_probs (B, V) at the last position, state)
    step(ids (B,), state)                  -> (log_probs (B, V), state)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from lmcli.config import DataConfig
from lmcli.data.pipeline import start_id
from lmcli.data.tokenizer import Tokenizer
from lmcli.model.backend import KerasBackend
from lmcli.model.scoring import sums
from lmcli.runtime.errors import RunDirError
from lmcli.serve.export_format import is_export_dir, read_meta
from lmcli.train.checkpoints import RunPaths, load_model


@dataclass(frozen=True)
class ModelInfo:
    path: str
    kind: str  # run | export
    checkpoint_step: int
    loss_trained: str
    data: DataConfig  # the run's saved data layout: eval scores a split exactly as training's validation did
    data_dir: str
    start_id: int


class ExportBackend:
    """A SavedModel written by `lmcli export`, used through its functions only (no Keras)."""

    def __init__(self, path: Path, meta: dict) -> None:
        self.graph = tf.saved_model.load(str(path))
        self.names = meta["state_names"]
        self.hidden = int(meta["model"]["hidden"])

    def _flat(self, state) -> dict:
        return dict(zip(self.names, [t for hc in state for t in hc]))

    def _pairs(self, out: dict) -> list:
        flat = [out[n] for n in self.names]
        return [(flat[i], flat[i + 1]) for i in range(0, len(flat), 2)]

    def zero_state(self, batch_size: int) -> list:
        zeros = tf.zeros([batch_size, self.hidden])
        return [(zeros, zeros) for _ in range(len(self.names) // 2)]

    def score(self, inputs, labels, mask, state=None) -> dict:
        state = state if state is not None else self.zero_state(np.shape(inputs)[0])
        out = self.graph.score_batch(tf.constant(inputs, tf.int32), tf.constant(labels, tf.int32),
                                     tf.constant(mask, tf.float32), *[t for hc in state for t in hc])
        return {"nll": out["nll"], **sums(out, mask), "state": self._pairs(out)}

    def prefill(self, ids, mask):
        out = self.graph.prefill(tf.constant(ids, tf.int32), tf.constant(mask, tf.bool))
        return out["log_probs"], self._pairs(out)

    def step(self, ids, state):
        out = self.graph.signatures["step"](ids=tf.constant(ids, tf.int32), **self._flat(state))
        return out["log_probs"], self._pairs(out)


def _data_config(path: Path, values: dict) -> DataConfig:
    try:
        return DataConfig(**values)
    except TypeError as e:
        raise RunDirError(f"{path}: the export's data settings cannot be read ({e})") from None


def open_model(path: Path, checkpoint: str = "best") -> tuple[Any, Tokenizer, ModelInfo]:
    """(backend, tokenizer, info) for a run dir or an export dir."""
    path = Path(path)
    if is_export_dir(path):
        meta = read_meta(path)
        tokenizer = Tokenizer.load(path / meta["tokenizer"])
        info = ModelInfo(str(path), "export", int(meta["checkpoint_step"]), meta["loss_trained"],
                         _data_config(path, meta["data"]), meta.get("data_dir", ""), int(meta["start_id"]))
        return ExportBackend(path, meta), tokenizer, info
    model, cfg, step = load_model(path, checkpoint)
    tokenizer = Tokenizer.load(RunPaths(path).tokenizer)
    start = start_id(cfg.data.padding, tokenizer)
    info = ModelInfo(str(path), "run", step, cfg.loss.name, cfg.data, cfg.data_dir, start)
    return KerasBackend(model), tokenizer, info


__all__ = ["ExportBackend", "KerasBackend", "ModelInfo", "open_model"]
