"""lmcli as a library: train your own Keras backbone with lmcli's loss strategies, terms and samplers.

    import lmcli.keras as lk

    model = lk.BackboneModel(my_backbone, vocab_size=V, dim=D)       # my_backbone: ids (B, T) -> (B, T, D)
    model.build()
    model.compile(lk.LazyAdam(2e-3), lk.objective(model, "sampled", unigram_counts=counts, num_sampled=64))
    model.fit(dataset, epochs=3, callbacks=[lk.EpochClock()])        # (ids, labels[, mask]) or dict batches
    model.evaluate(valid)                                            # full softmax: mean nats per real token
    lk.export(model, "export/")                                      # SavedModel: log_probs, score

The same path trains the CLI's network (`LanguageModel`): `lmcli train` builds it, makes its objective and
compiles it exactly so, then runs its own resumable loop over `train_step`.

- `OutputLayer` owns W [V, D] and b [V]; whatever strategy trains them, `evaluate`, `score` and exports use
  the full softmax with the same weights.
- `objective` (strategy + terms) takes the options of `lmcli train` as keyword arguments, by their config
  names (`num_sampled=`, `candidate_sets=`, `tapas_correction=`, `aux_loss=("ar",)`, `ar_alpha=`, ...), and
  checks them as the CLI does.
- The loss's mean is over real tokens: the mask (the third element of a batch, or `"mask"`) decides what counts.
- `EpochClock` feeds the fractional epoch to terms weighted by it under `fit`; the step is the optimizer's.
- `LazyAdam` updates only the rows a sparse gradient touches (sampled and TAPAS gradients of W, b and E).
- `LSTM` is keras.layers.LSTM whose CPU loop computes the weight gradients after the time loop (the CLI's layer).
"""

from __future__ import annotations

from typing import Optional

import keras
import numpy as np

from lmcli.config import LossConfig, ModelConfig, RunConfig, TermsConfig, TrainConfig
from lmcli.losses import STRATEGIES
from lmcli.model.backbone import BackboneModel
from lmcli.model.embedding import WordEmbedding as Embedding
from lmcli.model.lstm import LSTM
from lmcli.model.network import LanguageModel
from lmcli.model.output import OutputLayer
from lmcli.model.softmax_model import SoftmaxModel
from lmcli.runtime.errors import ConfigError
from lmcli.serve.exporting import export_model as export
from lmcli.train.objective import Objective
from lmcli.train.optim import LazyAdam

_LOSS_FIELDS = {f for f in LossConfig.__dataclass_fields__ if f != "name"}
_TERM_FIELDS = set(TermsConfig.__dataclass_fields__)


def objective(model: SoftmaxModel, loss: str = "full", unigram_counts: Optional[np.ndarray] = None, seed: int = 0,
              never_labels: tuple[int, ...] = (), **options) -> Objective:
    """The strategy `loss` (one of `STRATEGIES`) plus the terms in `aux_loss`, for `model`, checked as the CLI
    checks its options.

    Args:
        model: the model it will train (its vocabulary size and the extras its layers expose).
        loss: "full", "sampled" or "tapas".
        unigram_counts: (V,) token counts of the training data; the unigram sampler (sampled's default) draws from
            them, e.g. `np.bincount(train_ids.ravel(), minlength=V)`.
        seed: keys the sampler's draws (with the step).
        never_labels: ids no batch has as a label (a padding id, say): the unigram sampler never draws them. Any
            other class needs to be drawn now and then, or its logit is never pushed down.
        **options: `LossConfig` and `TermsConfig` fields, e.g. num_sampled=64, aux_loss=("ar",).
    """
    unknown = set(options) - _LOSS_FIELDS - _TERM_FIELDS
    if unknown:
        raise ConfigError(f"unknown option(s) {sorted(unknown)} (loss: {sorted(_LOSS_FIELDS)}; terms: "
                          f"{sorted(_TERM_FIELDS)})")
    loss_cfg = LossConfig(name=loss, **{k: v for k, v in options.items() if k in _LOSS_FIELDS})
    terms_cfg = TermsConfig(**{k: tuple(v) if k == "aux_loss" else v for k, v in options.items()
                               if k in _TERM_FIELDS})
    variational = "log_alpha" in model.extras_provided  # brings the kl term, as --variational-embedding does
    cfg = RunConfig(model=ModelConfig(vocab_size=model.vocab_size, variational_embedding=variational),
                    loss=loss_cfg, terms=terms_cfg, train=TrainConfig(seed=seed)).resolved()
    cfg.validate()
    if "embedding" in cfg.term_names and model.embedding_matrix() is None:
        raise ConfigError("the embedding term needs the model's input embedding (BackboneModel(embedding=...))")
    return Objective.for_run(cfg, unigram_counts, model.extras_provided, tuple(never_labels))


class EpochClock(keras.callbacks.Callback):
    """Feeds `fit`'s fractional epoch (epoch index + batch / batches per epoch) to the objective's clock, so a
    term weighted by the epoch (the kl warm-up, say) follows it. Without it the clock's epoch stays 0."""

    def __init__(self) -> None:
        super().__init__()
        self.epoch = 0

    def on_epoch_begin(self, epoch: int, logs=None) -> None:
        self.epoch = epoch
        self.model.set_epoch(epoch)

    def on_train_batch_begin(self, batch: int, logs=None) -> None:
        steps = (self.params or {}).get("steps")
        self.model.set_epoch(self.epoch + (batch / steps if steps else 0.0))


__all__ = ["LSTM", "STRATEGIES", "BackboneModel", "Embedding", "EpochClock", "LanguageModel", "LazyAdam", "Objective",
           "OutputLayer", "SoftmaxModel", "export", "objective"]
