"""Loss terms: what a run adds to its strategy's loss in training, `loss = strategy + sum_i weight_i * term_i`.

A term is a plain function

    fn(inputs: LossInputs, out: StrategyOutput, cfg: TermsConfig) -> (N,) per-token values, or () a scalar

given the same bundle as the strategy (W, b, E, hidden states, labels, mask, the clock, layer extras) plus the
strategy's output (its logits over the classes it scored). Per-token values are reduced with the strategy's
loss, over real tokens, in `lmcli.train.objective`; a scalar is added as it is. Its weight is a function of the clock.
Terms never enter evaluation, generation or exports. The registry below is the whole list.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Optional

import tensorflow as tf

from lmcli.config import TermsConfig
from lmcli.losses.context import Clock, LossInputs, StrategyOutput
from lmcli.runtime.errors import ConfigError
from lmcli.terms import activation, embedding, variational

TermFn = Callable[[LossInputs, StrategyOutput, TermsConfig], tf.Tensor]
WeightFn = Callable[[Clock, TermsConfig], tf.Tensor]
StatsFn = Callable[[LossInputs, TermsConfig], dict]


@dataclass(frozen=True)
class Term:
    """A registry entry: the term, its weight, the layer extras it reads, and any extra logged values."""

    fn: TermFn
    weight: WeightFn
    needs: tuple[str, ...] = ()  # keys of LossInputs.extras
    stats: Optional[StatsFn] = None


TERMS: dict[str, Term] = {
    "embedding": Term(embedding.term, embedding.weight),
    "ar": Term(activation.ar_term, activation.ar_weight),
    "tar": Term(activation.tar_term, activation.tar_weight, needs=("raw_hidden",)),
    "kl": Term(variational.term, variational.weight, needs=("log_alpha",), stats=variational.stats),
}

PROVIDED_BY = {"raw_hidden": "every model", "log_alpha": "--variational-embedding"}


def get(name: str, provided: frozenset[str]) -> Term:
    """The term called `name`; a ConfigError if it is unknown or needs an extra the model does not provide."""
    try:
        found = TERMS[name]
    except KeyError:
        raise ConfigError(f"unknown loss term '{name}' (choose from {', '.join(TERMS)})") from None
    missing = [n for n in found.needs if n not in provided]
    if missing:
        raise ConfigError(f"the {name} term needs {', '.join(PROVIDED_BY.get(n, n) for n in missing)}")
    return found


__all__ = ["TERMS", "Term", "get"]
