"""Full-softmax evaluation, whatever loss trained the model, from a run dir or an export dir.

Metrics are token-weighted over real (unmasked) tokens: mean NLL in nats, perplexity = exp(NLL),
bits per byte = total NLL / ln 2 / UTF-8 bytes of the original lines (newline counted, since `</s>`
predicts it), top-1/top-5 accuracy (a tie with the label counts against it).
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Optional

import numpy as np

from lmcli.data.corpus import read_lines
from lmcli.data.layout import SPLITS
from lmcli.data.shards import encode_lines, open_data_dir
from lmcli.runtime.errors import ConfigError, InputError, RunDirError
from lmcli.runtime.fileio import atomic_write_text
from lmcli.runtime.progress import Progress
from lmcli.serve.inference import open_model
from lmcli.train.validation import score_split


def summarize(sums: dict, n_bytes: int, lines: int) -> dict:
    tokens = sums["tokens"]
    nll = sums["nll_sum"] / tokens if tokens else float("nan")
    return {"tokens": int(tokens), "lines": lines, "bytes": n_bytes, "nll": nll,
            "perplexity": math.exp(nll) if tokens else float("nan"),
            "bits_per_byte": sums["nll_sum"] / math.log(2) / n_bytes if n_bytes else float("nan"),
            "top1": sums["top1"] / tokens if tokens else float("nan"),
            "top5": sums["top5"] / tokens if tokens else float("nan")}


def unigram_perplexity(train_counts: np.ndarray, split) -> float:
    """Perplexity of an add-one unigram model estimated on the train split: the baseline to beat."""
    probs = (train_counts + 1.0) / (train_counts.sum() + len(train_counts))  # (V,)
    labels = split.ids.slice(0, len(split.ids))
    return float(np.exp(-np.log(probs[labels]).mean()))


class LineWriter:
    """Collects per-line scores (lines scored alone from a fresh state) and writes them as JSONL."""

    def __init__(self, split, tokenizer, token_logprobs: bool) -> None:
        self.split, self.tokenizer, self.token_logprobs = split, tokenizer, token_logprobs
        self.rows: dict[int, dict] = {}

    def __call__(self, batches, k, batch, out) -> None:
        nll = np.asarray(out["nll"])  # (B, T)
        for r, piece in enumerate(batches.batches[k]):
            line = int(batches.line[piece])
            real = batch.mask[r] > 0
            lp = -nll[r][real]
            row = {"line": line, "loglik": float(lp.sum()), "tokens": int(real.sum()),
                   "perplexity": float(math.exp(-lp.mean()))}
            if self.token_logprobs:
                labels = batch.labels[r][real]
                row["pieces"] = [self.tokenizer.id_to_piece(int(i)) for i in labels]
                row["logprobs"] = [float(x) for x in lp]
            self.rows[line] = row

    def write(self, path: Path) -> None:
        atomic_write_text(path, "".join(json.dumps(self.rows[i]) + "\n" for i in sorted(self.rows)))


def evaluate(model_dir: Path, split: Optional[str] = "test", text: Optional[Path] = None,
             checkpoint: str = "best", batch_size: Optional[int] = None, encoding_errors: str = "strict",
             per_line: Optional[Path] = None, token_logprobs: bool = False, whole_lines: bool = False,
             progress: Progress = Progress()) -> dict:
    """Evaluate a run dir or an export dir on a data-dir split or on a text file.

    By default a split is scored exactly as training's validation scores it: in the run's saved layout
    (pack: the stream cut into `batch_size` rows of `seq_len` windows with the state carried; pad: lines cut
    into pieces of at most `max_len` predictions, each from a fresh state).

    Args:
        model_dir: a run dir (`lmcli train`) or an export dir (`lmcli export`).
        split: valid | test | train (ignored when `text` is given).
        text: a plain-text file (one line per sequence) encoded with the model's tokenizer.
        checkpoint: best | latest | STEP (run dirs only).
        batch_size: overrides the run's batch size (pack mode: the stream is then cut into other rows).
        per_line: write one JSON object per input line (scored alone, from a fresh state) to this file.
        token_logprobs: add each line's pieces and their log-probs to `per_line` records.
        whole_lines: score each line whole, alone, from a fresh state, whatever the run's layout and max_len.
    """
    _check_eval_options(split, text, batch_size, encoding_errors, per_line, token_logprobs)
    backend, tokenizer, info = open_model(model_dir, checkpoint)
    data, source, baseline = _eval_data(model_dir, info, tokenizer, split, text, encoding_errors)
    data_cfg = info.data if batch_size is None else dataclasses.replace(info.data, batch_size=batch_size)
    specials = {"bos_id": tokenizer.bos_id, "eos_id": tokenizer.eos_id, "pad_id": tokenizer.pad_id}
    scoring = info.data.padding
    if per_line is not None or whole_lines:  # every line alone: pad layout, one piece per line, the training start id
        data_cfg = dataclasses.replace(data_cfg, padding="pad", max_len=max(1, int(data.lengths().max(initial=1))),
                                       bucket_by_length=True)
        specials["bos_id"] = info.start_id
        scoring = "per-line" if per_line is not None else "whole-lines"
    writer = LineWriter(data, tokenizer, token_logprobs) if per_line is not None else None
    started = time.monotonic()
    sums = score_split(backend, data, data_cfg, specials, progress, f"eval {source}", on_batch=writer)
    seconds = time.monotonic() - started
    if writer is not None:
        writer.write(Path(per_line))
    result = {"model": str(model_dir), "model_kind": info.kind, "checkpoint_step": info.checkpoint_step,
              "source": source, "loss_trained": info.loss_trained, "scoring": scoring,
              **summarize(sums, data.bytes, data.lines), "seconds": seconds,
              "tokens_per_s": sums["tokens"] / seconds if seconds else 0.0}
    if baseline is not None:
        result["unigram_perplexity"] = baseline
    if per_line is not None:
        result["per_line"] = str(per_line)
    return result


def _check_eval_options(split, text, batch_size, encoding_errors, per_line, token_logprobs) -> None:
    if token_logprobs and per_line is None:
        raise ConfigError("--token-logprobs needs --per-line FILE")
    if text is None and split not in SPLITS:
        raise ConfigError(f"unknown split '{split}' (choose from {', '.join(SPLITS)})")
    if encoding_errors not in ("strict", "replace"):
        raise ConfigError(f"unknown encoding-errors mode '{encoding_errors}' (choose from strict, replace)")
    if batch_size is not None and batch_size <= 0:
        raise ConfigError(f"--batch-size must be positive, got {batch_size}")


def _eval_data(model_dir, info, tokenizer, split, text, encoding_errors):
    """(split data, source name, unigram baseline or None) for a data-dir split or a text file."""
    if text is not None:
        data = encode_lines(read_lines(str(text), encoding_errors), tokenizer, name=str(text))
        if data.lines == 0:
            raise InputError(f"{text}: no text lines (empty or whitespace-only input)")
        return data, str(text), None
    if not info.data_dir:
        raise RunDirError(f"{model_dir} does not name a data dir; use --text FILE")
    data_dir = open_data_dir(info.data_dir)
    if data_dir.tokenizer_sha256 != tokenizer.sha256:
        raise RunDirError(f"the data dir {info.data_dir} has a different tokenizer than {model_dir}")
    data = data_dir.split(split)
    return data, split, unigram_perplexity(data_dir.unigram_counts, data)
