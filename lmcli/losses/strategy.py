"""What a loss strategy declares about itself, so that nothing outside its module repeats it.

Each strategy module (full.py, sampled.py, tapas.py) ends with one `STRATEGY = Strategy(...)`, and the registry
in `lmcli.losses` names it in one line. The rest of lmcli asks the entry: the config (`RunConfig.validate` and
`resolved`) for its options' checks, the optimizer that suits it and what `--sampler auto` means; the memory plan
for its output layer's share of a training step; the model's setup for whether it draws candidates; the NaN
message for a likely cause of its own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

from lmcli.losses.context import StrategyContext
from lmcli.losses.samplers import make_sampler

if TYPE_CHECKING:
    import numpy as np

    from lmcli.config import LossConfig
    from lmcli.losses.context import LossInputs, StrategyOutput


@dataclass(frozen=True)
class StepSize:
    """The sizes of one replica's training step that a strategy's memory cost depends on."""

    tokens: int  # N, tokens in one replica's batch
    rows: int  # batch rows of one replica
    global_rows: int  # batch rows over all replicas (--batch-size)
    vocab_size: int  # V
    dim: int  # D, the width of W


@dataclass(frozen=True)
class OutputMemory:
    """A strategy's share of one training step's memory: what its output layer holds."""

    bytes: int  # logits, their gradients, the rows of W it gathers and the gradient of W (float32)
    classes: int  # classes scored per token (what a loss term that reads its logits holds per token)


StrategyFn = Callable[["LossInputs", "LossConfig", StrategyContext], "StrategyOutput"]
Check = Callable[["LossConfig", int], None]
Memory = Callable[["LossConfig", StepSize], OutputMemory]
NanCause = Callable[["LossConfig", int, int], Optional[str]]


def no_options(config: LossConfig, vocab_size: int) -> None:
    """The check of a strategy that reads none of the loss options."""
    del config, vocab_size


def every_class(config: LossConfig, size: StepSize) -> OutputMemory:
    """The output layer of a strategy that scores every class for every token: the (N, V) logits and part of their
    gradient, and the dense gradient of W (V, D)."""
    del config
    n, v = size.tokens, size.vocab_size
    return OutputMemory(4 * (3 * n * v // 2 + v * size.dim), v)


@dataclass(frozen=True)
class Strategy:
    """A registry entry: the function, and every fact about it that the rest of lmcli needs.

    The defaults describe a strategy that scores every class and has no options of its own.
    """

    fn: StrategyFn
    draws_candidates: bool = False  # needs the candidate sampler named by --sampler
    check: Check = no_options  # raises ConfigError for a bad value of its options, given V (after the choices)
    optimizer: str = "adam"  # what --optimizer auto becomes (lazy-adam where a step touches a few rows of W)
    sampler: str = "unigram"  # what --sampler auto becomes (saved in config.json, drawn from or not)
    candidate_sets: str = "batch"  # what --candidate-sets auto becomes where the memory plan affords it
    memory: Memory = every_class  # its output layer's share of a training step, for the memory plan
    nan_cause: Optional[NanCause] = None  # (config, step, total steps) -> the first thing to try after a NaN loss

    def setup(self, config: LossConfig, vocab_size: int, unigram_counts: Optional[np.ndarray],
              seed: int, never_labels: tuple[int, ...] = ()) -> StrategyContext:
        """The strategy's per-run context (its sampler, or none); `never_labels`: ids the unigram sampler skips."""
        sampler = (make_sampler(config, vocab_size, unigram_counts, seed, never_labels) if self.draws_candidates
                   else None)
        return StrategyContext(sampler, seed)
