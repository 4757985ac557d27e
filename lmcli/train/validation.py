"""Scoring a whole split, batch by batch, with the full softmax: training's validation and `lmcli eval` both
call this, in the run's own layout, so they report the same number for the same checkpoint."""

from __future__ import annotations

import math

from lmcli.config import DataConfig
from lmcli.data.pipeline import make_batches
from lmcli.runtime.progress import Progress


def score_split(model, split, data_cfg: DataConfig, specials: dict, progress: Progress,
                description: str = "eval", on_batch=None) -> dict:
    """Sum NLL / tokens / top-k hits over every real token of `split`.

    `model` is anything with `score(inputs, labels, mask, state)` and `zero_state(B)` (a LanguageModel or
    an inference backend). `on_batch(k, batch, out)` sees each batch's per-token results.
    """
    batches = make_batches(split, data_cfg, specials, shuffle=False)
    state = model.zero_state(data_cfg.batch_size) if batches.carries_state else None
    sums = {"nll_sum": 0.0, "tokens": 0.0, "top1": 0.0, "top5": 0.0}
    with progress.task(description, total=len(batches)) as task:
        for k in range(len(batches)):
            b = batches[k]
            out = model.score(b.inputs, b.labels, b.mask, state)
            if batches.carries_state:
                state = out["state"]
            for key in sums:
                sums[key] += float(out[key])
            if on_batch is not None:
                on_batch(batches, k, b, out)
            task.update(1, ppl=math.exp(sums["nll_sum"] / max(sums["tokens"], 1.0)))
    return sums
