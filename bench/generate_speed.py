"""Generation and evaluation speed of a checkpoint model and of its export, measured side by side in one process.

    python bench/generate_speed.py --vocab 8000 --dim 512 --json

The model has random weights (no training). "checkpoint" is the Keras model behind `lmcli generate RUN_DIR`
(KerasBackend); "export" is the same weights as an InferenceGraph SavedModel, reloaded the way
`lmcli generate EXPORT_DIR` reloads it (ExportBackend). Generation runs lmcli.serve.generation.generate (greedy,
a stub tokenizer whose eos never comes, so every row makes all --new-tokens); its tokens/s count the step loop
only (after the prompt is run), which is what a long generation costs. context_ratio is the per-token time
after a --long-prompt-token prompt over that after a --prompt-tokens prompt (batch 1): the state carries the
context, so it should stay near 1. Evaluation scores the same random token split with lmcli.train.validation.score_split
(pack layout, batch 32 x 35). Times are the best of --repeats runs (2x for batch 1), the compared cases taking
turns, since the machine may be shared.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from lmcli.runtime.tfsetup import import_tensorflow  # noqa: E402

import_tensorflow()

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from lmcli.config import DataConfig, GenerateConfig, ModelConfig  # noqa: E402
from lmcli.data.shards import SplitData, TokenArray  # noqa: E402
from lmcli.model import build_model  # noqa: E402
from lmcli.model.graph import InferenceGraph  # noqa: E402
from lmcli.runtime.progress import Progress  # noqa: E402
from lmcli.serve.generation import generate  # noqa: E402
from lmcli.serve.inference import ExportBackend, KerasBackend  # noqa: E402
from lmcli.train.validation import score_split  # noqa: E402

SPECIALS = {"pad_id": 0, "bos_id": 2, "eos_id": 3}


class StubTokenizer:
    """Prompts are space-separated ids; eos is -1, so greedy decoding never stops early."""

    eos_id = -1
    pad_id = 0

    def encode(self, text: str) -> list[int]:
        return [int(w) for w in text.split()]

    def decode(self, ids) -> str:
        return "".join(f" w{int(i)}" for i in ids)


class StepTimer:
    """A backend wrapper that notes when the prompt is done, so the step loop can be timed alone."""

    def __init__(self, backend) -> None:
        self.backend = backend
        self.prefilled_at = 0.0

    def prefill(self, ids, mask):
        log_probs, state = self.backend.prefill(ids, mask)
        np.asarray(log_probs)  # wait for the result
        self.prefilled_at = time.perf_counter()
        return log_probs, state

    def step(self, ids, state):
        return self.backend.step(ids, state)


def prompts(rng, vocab: int, batch: int, length: int) -> list[str]:
    """`batch` prompts of `length` random ids, as StubTokenizer text."""
    return [" ".join(str(i) for i in rng.integers(4, vocab, size=length)) for _ in range(batch)]


def step_loop_seconds(backend, prompt_sets: list[list[str]], new_tokens: int,
                      repeats: int) -> tuple[list[float], list[list[str]]]:
    """Best time of generate()'s step loop for each set of prompts, the sets run in turn `repeats` times
    (after one warm-up round that traces the functions for these shapes), so that load changes hit all alike."""
    timer = StepTimer(backend)
    cfg = GenerateConfig(max_tokens=new_tokens, temperature=0.0, seed=0)
    best, texts = [float("inf")] * len(prompt_sets), [[] for _ in prompt_sets]
    for k in range(repeats + 1):
        for i, prompts_i in enumerate(prompt_sets):
            out = generate(timer, StubTokenizer(), prompts_i, cfg, start_id=SPECIALS["eos_id"])
            assert all(s["tokens"] == new_tokens for s in out)
            texts[i] = [s["text"] for s in out]
            if k:
                best[i] = min(best[i], time.perf_counter() - timer.prefilled_at)
    return best, texts


def random_split(rng, vocab: int, tokens: int) -> SplitData:
    """Random ids in lines of 5-40 tokens, each line ending with eos, as an in-memory split."""
    ids = rng.integers(4, vocab, size=tokens).astype(np.uint32)
    ends = np.cumsum(rng.integers(5, 41, size=tokens // 5))
    ends = np.append(ends[ends < tokens], tokens)
    ids[ends - 1] = SPECIALS["eos_id"]
    offsets = np.concatenate([[0], ends]).astype(np.int64)
    return SplitData(name="bench", lines=len(ends), tokens=tokens, bytes=4 * tokens, ids=TokenArray([ids]),
                     offsets=offsets)


def eval_tokens_per_s(backends: dict, split: SplitData, warmup: SplitData, cfg: DataConfig,
                      repeats: int) -> tuple[dict, dict]:
    """({backend: best tokens/s}, {backend: mean nll}) of score_split over `split`, the backends taking turns."""
    for backend in backends.values():
        score_split(backend, warmup, cfg, SPECIALS, Progress())  # trace
    best, nll = dict.fromkeys(backends, float("inf")), {}
    for _ in range(repeats):
        for name, backend in backends.items():
            start = time.perf_counter()
            sums = score_split(backend, split, cfg, SPECIALS, Progress())
            best[name] = min(best[name], time.perf_counter() - start)
            nll[name] = sums["nll_sum"] / sums["tokens"]
    return {name: split.tokens / seconds for name, seconds in best.items()}, nll


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--vocab", type=int, default=8000)
    p.add_argument("--dim", type=int, default=512, help="E = H")
    p.add_argument("--layers", type=int, default=1)
    p.add_argument("--new-tokens", type=int, default=200)
    p.add_argument("--prompt-tokens", type=int, default=10)
    p.add_argument("--long-prompt", type=int, default=1000, help="prompt length for context_ratio")
    p.add_argument("--batches", default="1,32", help="generation batch sizes")
    p.add_argument("--eval-tokens", type=int, default=32 * 35 * 20)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)

    keras.utils.set_random_seed(0)
    model = build_model(ModelConfig(vocab_size=a.vocab, embedding_dim=a.dim, hidden=a.dim, layers=a.layers))
    graph = InferenceGraph(model)
    tmp = tempfile.TemporaryDirectory(prefix="lmcli-bench-")
    tf.saved_model.save(graph, tmp.name, signatures=graph.signatures())
    backends = {"checkpoint": KerasBackend(model),
                "export": ExportBackend(tmp.name, {"state_names": graph.state_names, "model": {"hidden": a.dim}})}
    rng = np.random.default_rng(0)
    result = {"vocab": a.vocab, "dim": a.dim, "layers": a.layers, "new_tokens": a.new_tokens,
              "prompt_tokens": a.prompt_tokens, "long_prompt": a.long_prompt, "device": tf.test.gpu_device_name()
              or "cpu", "generate_tokens_per_s": {}, "per_token_ms": {}, "context_ratios": {}}

    texts = {}
    batches = [int(b) for b in a.batches.split(",")]
    for name, backend in backends.items():
        for batch in batches:
            sets = [prompts(np.random.default_rng(batch), a.vocab, batch, a.prompt_tokens)]
            if batch == 1:
                sets.append(prompts(np.random.default_rng(batch), a.vocab, batch, a.long_prompt))
            seconds, out = step_loop_seconds(backend, sets, a.new_tokens, a.repeats * (2 if batch == 1 else 1))
            texts[name, batch] = out[0]
            result["generate_tokens_per_s"][f"{name}_batch{batch}"] = batch * a.new_tokens / seconds[0]
            if batch == 1:
                short, long = (t / a.new_tokens for t in seconds)
                result["per_token_ms"][f"{name}_context{a.prompt_tokens}"] = 1e3 * short
                result["per_token_ms"][f"{name}_context{a.long_prompt}"] = 1e3 * long
                result["context_ratios"][name] = long / short
        if not a.json:
            print(name, json.dumps(result["generate_tokens_per_s"]), flush=True)
    result["context_ratio"] = max(result["context_ratios"].values())
    result["same_greedy_text"] = all(texts["checkpoint", b] == texts["export", b] for b in batches)

    cfg = DataConfig(padding="pack", batch_size=32, seq_len=35)
    split, warmup = random_split(rng, a.vocab, a.eval_tokens), random_split(rng, a.vocab, 32 * 35 * 2)
    result["eval_tokens_per_s"], nll = eval_tokens_per_s(backends, split, warmup, cfg, a.repeats)
    result["eval_nll_abs_diff"] = abs(nll["export"] - nll["checkpoint"])
    result["eval_export_over_checkpoint"] = result["eval_tokens_per_s"]["export"] / \
        result["eval_tokens_per_s"]["checkpoint"]
    tmp.cleanup()
    print(json.dumps(result) if a.json else json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
