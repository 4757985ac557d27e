"""A run's training loss: one strategy plus any number of terms, reduced over real tokens in one place.

    loss = strategy + sum_i weight_i(clock) * term_i

Per-token values (the strategy's losses, per-token terms) are summed over real tokens and divided by the real
token count: this batch's by default, or the global count of all replicas under tf.distribute, so that the
replicas' losses add up to one device's loss on the same global batch. A scalar term (a regulariser) is divided
by the number of replicas for the same reason.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import tensorflow as tf

from lmcli import losses, terms
from lmcli.config import LossConfig, RunConfig, TermsConfig
from lmcli.losses.context import LossInputs, StrategyContext


class Objective:
    """Callable on a `LossInputs` bundle: (loss, sums, facts).

    `sums` are additive over replicas (the strategy's loss and each term's value, each already divided by the
    token count); `facts` are the same on every replica (each term's weight, and the values terms report).

    Args:
        loss_cfg: the strategy and its options.
        terms_cfg: the terms' options.
        term_names: terms to add, in order (`RunConfig.term_names`).
        ctx: the strategy's setup (`losses.get(name).setup(...)`).
        provided: the extras the model exposes (`LanguageModel.extras_provided`).
    """

    def __init__(self, loss_cfg: LossConfig, terms_cfg: TermsConfig = TermsConfig(), term_names: tuple = (),
                 ctx: StrategyContext = StrategyContext(), provided: frozenset = frozenset()) -> None:
        self.loss_cfg, self.terms_cfg, self.ctx = loss_cfg, terms_cfg, ctx
        self.strategy = losses.get(loss_cfg.name)
        self.terms = [(name, terms.get(name, provided)) for name in term_names]

    @classmethod
    def for_run(cls, cfg: RunConfig, unigram_counts: Optional[np.ndarray], provided: frozenset,
                never_labels: tuple[int, ...] = ()) -> "Objective":
        """The objective of `cfg`; `never_labels`: ids no batch has as a label (the unigram sampler skips them)."""
        ctx = losses.get(cfg.loss.name).setup(cfg.loss, cfg.model.vocab_size, unigram_counts, cfg.train.seed,
                                              never_labels)
        return cls(cfg.loss, cfg.terms, cfg.term_names, ctx, provided)

    def variables(self) -> list:
        """State to checkpoint: the sampler's (learned-unigram counts), if any."""
        return self.ctx.sampler.variables() if self.ctx.sampler is not None else []

    def __call__(self, inputs: LossInputs, count: Optional[tf.Tensor] = None,
                 replicas: int = 1) -> tuple[tf.Tensor, dict[str, Any], dict[str, Any]]:
        out = self.strategy.fn(inputs, self.loss_cfg, self.ctx)
        loss = losses.masked_mean(out.losses, inputs.mask, count)
        sums, facts = {"strategy_loss": loss}, {}
        for name, term in self.terms:
            value = term.fn(inputs, out, self.terms_cfg)
            value = losses.masked_mean(value, inputs.mask, count) if value.shape.rank == 1 else value / replicas
            weight = tf.cast(term.weight(inputs.clock, self.terms_cfg), tf.float32)
            loss += weight * value
            sums[name], facts[f"{name}_weight"] = value, weight
            if term.stats is not None:
                facts.update({f"{name}_{k}": v for k, v in term.stats(inputs, self.terms_cfg).items()})
        sums["loss"] = loss
        return loss, sums, facts
