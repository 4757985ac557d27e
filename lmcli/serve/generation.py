"""Sampling text: prompts run once (one batch, left-padded), then one LSTM step per token, state carried.

Token choice: temperature 0 is greedy; otherwise log-probs / temperature, then top-k, then top-p
(nucleus), then a draw. The generator of sample s of any prompt is seeded with (seed, s), so a prompt's
text depends on its seed alone, not on what else is in the batch. Text is decoded incrementally from a
short window of ids, so the cost per token does not grow with the prompt or the text so far.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Optional

import numpy as np

from lmcli.config import GenerateConfig
from lmcli.runtime.errors import ConfigError

WINDOW = 8  # ids of left context used to decode each new piece


def next_token_probs(log_probs: np.ndarray, temperature: float, top_k: int, top_p: float) -> np.ndarray:
    """Filtered, renormalised next-token distribution: (B, V) log-probs -> (B, V) probs."""
    scaled = log_probs.astype(np.float64)
    with np.errstate(over="ignore"):  # a tiny T sends all but the max to -inf, as meant
        logits = (scaled - scaled.max(axis=-1, keepdims=True)) / temperature  # (B, V): max 0, never -inf - -inf
    if top_k and top_k < logits.shape[-1]:
        kth = np.partition(logits, -top_k, axis=-1)[:, -top_k][:, None]  # (B, 1)
        logits = np.where(logits >= kth, logits, -np.inf)
    probs = np.exp(logits - logits.max(axis=-1, keepdims=True))
    probs /= probs.sum(axis=-1, keepdims=True)  # (B, V)
    if top_p < 1.0:
        order = np.argsort(-probs, axis=-1, kind="stable")  # (B, V)
        sorted_p = np.take_along_axis(probs, order, axis=-1)
        before = np.cumsum(sorted_p, axis=-1) - sorted_p  # mass strictly above each token
        keep = np.zeros(probs.shape, bool)
        np.put_along_axis(keep, order, before < top_p, axis=-1)  # the most likely token is always kept
        probs = np.where(keep, probs, 0.0)
        probs /= probs.sum(axis=-1, keepdims=True)
    return probs


def choose_tokens(log_probs: np.ndarray, cfg: GenerateConfig, rngs: Sequence[np.random.Generator]) -> np.ndarray:
    """One token per row: (B, V) log-probs -> (B,) ids."""
    if cfg.temperature == 0:
        return np.argmax(log_probs, axis=-1)
    probs = next_token_probs(log_probs, cfg.temperature, cfg.top_k, cfg.top_p)
    cdf = np.cumsum(probs, axis=-1)  # (B, V)
    draws = np.array([rng.random() for rng in rngs]) * cdf[:, -1]  # (B,)
    ids = np.array([np.searchsorted(cdf[i], draws[i], side="right") for i in range(len(rngs))])
    return np.minimum(ids, probs.shape[-1] - 1)


def held_back(text: str, stops: Sequence[str]) -> int:
    """How many trailing characters of `text` could be the start of a stop string (not shown yet)."""
    hold = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), 0, -1):
            if text.endswith(stop[:n]):
                hold = max(hold, n)
                break
    return hold


class Row:
    """One sample being generated: its ids, its text so far, and how much of it was shown."""

    def __init__(self, prompt: str, prompt_ids: list[int], sample: int, tokenizer) -> None:
        self.prompt, self.sample, self.tokenizer = prompt, sample, tokenizer
        self.ids = list(prompt_ids[-WINDOW:])
        self.pending = 0  # trailing ids not in `text` yet: byte pieces of an unfinished UTF-8 character
        self.tokens = 0
        self.text = ""
        self.shown = 0
        self.stopped: Optional[str] = None

    def _decode_pending(self, final: bool = False) -> None:
        """Move the pending ids' text into `text`, unless it ends inside a character (U+FFFD) and may finish."""
        context = self.ids[-WINDOW - self.pending:-self.pending]
        before = self.tokenizer.decode(context)
        after = self.tokenizer.decode(context + self.ids[-self.pending:])
        if after.endswith("\ufffd") and self.pending < WINDOW and not final:
            return
        self.text += after[len(os.path.commonprefix([before, after])):]
        self.pending = 0

    def add(self, token: int, stops: Sequence[str]) -> str:
        """Append a token; return the newly showable text."""
        self.ids.append(token)
        self.tokens += 1
        self.pending += 1
        self._decode_pending()
        cut = min((i for i in (self.text.find(s) for s in stops) if i >= 0), default=-1)
        if cut >= 0:
            self.text, self.stopped = self.text[:cut], "stop"
            show_to = len(self.text)
        else:
            show_to = len(self.text) - held_back(self.text, stops)
        new = self.text[self.shown:show_to]
        self.shown = max(self.shown, show_to)
        return new

    def flush(self) -> str:
        """At the row's end (eos or --max-tokens): the text held back so far, now shown."""
        if self.pending and self.stopped != "stop":
            self._decode_pending(final=True)
        new, self.shown = self.text[self.shown:], len(self.text)
        return new

    def result(self, seed: int) -> dict:
        return {"prompt": self.prompt, "sample": self.sample, "seed": seed, "text": self.prompt + self.text,
                "continuation": self.text, "tokens": self.tokens, "stopped": self.stopped or "length"}


def check_request(prompts: Sequence[str], cfg: GenerateConfig, stops: Sequence[str] = ()) -> None:
    """ConfigError for an empty prompt, an empty stop string or an invalid config."""
    cfg.validate()
    if not prompts or any(not p.strip() for p in prompts):
        raise ConfigError("the prompt is empty")
    if any(not s for s in stops):
        raise ConfigError("--stop strings must not be empty")


def generate(backend, tokenizer, prompts: Sequence[str], cfg: GenerateConfig, start_id: int,
             stops: Sequence[str] = (), on_text: Optional[Callable[[int, str], None]] = None) -> list[dict]:
    """Sample `cfg.num_samples` continuations of every prompt, all in one batch.

    Args:
        backend: has `prefill(ids, mask)` and `step(ids, state)` (see lmcli.serve.inference).
        tokenizer: encodes prompts, decodes pieces.
        prompts: texts to continue; row order is prompt-major (p0 s0, p0 s1, ..., p1 s0, ...).
        start_id: the id that precedes a line in training (`<s>` for pad mode, `</s>` for pack mode).
        stops: stop strings; generation of a row ends when one appears, and it is not included.
        on_text: called as on_text(row, new_text) while text is produced.

    Returns:
        One dict per row: prompt, sample, seed, text (prompt + continuation), continuation, tokens, stopped.
    """
    check_request(prompts, cfg, stops)
    seed = cfg.seed if cfg.seed is not None else int(np.random.SeedSequence().entropy % (2**31))
    encoded = [[start_id] + tokenizer.encode(p) for p in prompts]
    rows = [Row(p, ids, s, tokenizer) for p, ids in zip(prompts, encoded) for s in range(cfg.num_samples)]
    rngs = [np.random.default_rng([seed, row.sample]) for row in rows]
    width = max(len(ids) for ids in encoded)
    ids = np.full((len(rows), width), tokenizer.pad_id, np.int32)  # (B, T) left-padded prompts
    mask = np.zeros((len(rows), width), bool)
    for r, row_ids in enumerate(ids_ for ids_ in encoded for _ in range(cfg.num_samples)):
        ids[r, width - len(row_ids):] = row_ids
        mask[r, width - len(row_ids):] = True
    log_probs, state = backend.prefill(ids, mask)
    done = np.zeros(len(rows), bool)
    for _ in range(cfg.max_tokens):
        new = choose_tokens(np.asarray(log_probs), cfg, rngs)  # (B,)
        for r in np.flatnonzero(~done):
            if new[r] == tokenizer.eos_id:
                done[r] = True
                rows[r].stopped = "eos"
                continue
            text = rows[r].add(int(new[r]), stops)
            if text and on_text is not None:
                on_text(int(r), text)
            done[r] = rows[r].stopped is not None
        if done.all():
            break
        log_probs, state = backend.step(new.astype(np.int32), state)
    for r, row in enumerate(rows):
        text = row.flush()
        if text and on_text is not None:
            on_text(r, text)
    return [row.result(seed) for row in rows]
