"""The training step of a run, built once for the trainer, the benchmarks and the tests: the model, its optimizer
and objective made under the cluster's strategy, and the distributed step over them (`lmcli.train.distribution`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Optional

import keras
import numpy as np

from lmcli.config import RunConfig
from lmcli.data.tokenizer import BOS_ID, PAD_ID
from lmcli.model import LanguageModel, build_model
from lmcli.train.distribution import Cluster, make_step, variable_scope
from lmcli.train.objective import Objective
from lmcli.train.optim import make_optimizer

NEVER_LABELS = (PAD_ID, BOS_ID)  # a data dir's padding and start ids: the unigram sampler never draws them
ADDITIVE = ("loss", "strategy_loss", "tokens")  # step outputs summed over replicas (with the terms' values)


@dataclass(frozen=True)
class TrainingStep:
    """What one run trains: the model, the optimizer, the objective, and `run(feeds)` (one distributed step)."""

    model: LanguageModel
    optimizer: Any
    objective: Objective
    run: Callable


def build_training_step(cfg: RunConfig, cluster: Cluster, unigram_counts: Optional[np.ndarray],
                        total_steps: int = 0, train_tokens: int = 0) -> TrainingStep:
    """Seed, build the model and the optimizer's slots under `cluster`'s strategy, compile the objective in, and
    wrap `train_step` in the distributed step. `cfg` must be resolved (`RunConfig.resolved`)."""
    keras.utils.set_random_seed(cfg.train.seed)
    with variable_scope(cluster):
        model = build_model(cfg.model, cfg.train.precision)
        optimizer = make_optimizer(cfg.train)
        optimizer.build(model.trainable_variables)
        objective = Objective.for_run(cfg, unigram_counts, model.extras_provided, NEVER_LABELS)
        model.compile(optimizer, objective, cfg.train.clip_norm, cfg.train.seed, total_steps, train_tokens)
    run = make_step(cluster, model.train_step, {*ADDITIVE, *cfg.term_names})
    return TrainingStep(model, optimizer, objective, run)
