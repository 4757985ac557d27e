"""Quality canary: sampled softmax must train a model nearly as good as the full softmax does.

A synthetic language made here from a fixed seed (300 words with Zipf frequencies; each word is followed by one
of its 4 successors 90% of the time, by a Zipf draw otherwise: the chain's own perplexity is about 6.7, line ends
aside) is prepared with a `word` tokenizer, and the same tiny LSTM (E 32, H 64, batch 16 x 20, lr 0.01, seed 5) is
trained 600 steps with `--loss full` and with `--loss sampled` (20 unigram candidates, about 7% of V), with the
default per-row candidate sets and with one set shared by the batch. All are scored on the test split by the full
softmax, as `lmcli eval` scores them, and each ratio sampled / full of their perplexities must be below
RATIO_BOUND. The training runs in a subprocess because it turns on TensorFlow's op determinism, which is
process-global: two runs give the same numbers to the last digit.

Measured (CPU, TF 2.21): full 10.38; shared set 11.16, ratio 1.076 (other data and training seeds: 1.06 and 1.08);
per-row sets 10.52, ratio 1.014. Each of three realistic mistakes in the sampled path, planted by hand in the
library and run here, failed (per-row / shared ratio):

1. log-Q not subtracted: the `if subtract_log_q:` block of `losses/sampled.py:sampled_logits` deleted, so the
   shared set's logits stay w.h + b: shared 1.825 (1.84 and 1.86 with the other seeds); the two `- log(expected)`
   lines of `per_row_logits` deleted: per-row 1.681.
2. the sampler's key ignores the step: `samplers.py:Sampler._key` returning (seed, 0) instead of (seed, step),
   so every step draws the same candidates: per-row 1347, shared 1297.
3. the label's column dropped from the normaliser: `sampled.py:label_first_losses` returning
   logsumexp(logits[:, 1:]) - logits[:, 0]: per-row 291, shared 17.9.

The bound 1.4 sits near the geometric middle of 1.08 (correct) and 1.83 (the closest mistake). Other candidate
counts, measured at 400 steps (full 10.65): with 10 the correct code gives 1.62 (mistake 1: 2.47), too close to any
bound; with 40 the correct code gives 1.08 but mistakes 1 and 3 only 1.41 and 1.33.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
RATIO_BOUND = 1.4  # sampled / full test perplexity
VOCAB, SUCCESSORS, FOLLOW, ZIPF_EXPONENT = 300, 4, 0.9, 1.1
LINES, DATA_SEED = 3000, 0
TRAIN = {"model": {"embedding_dim": 32, "hidden": 64},
         "data": {"batch_size": 16, "seq_len": 20},
         "train": {"lr": 0.01, "seed": 5, "max_steps": 600, "epochs": 10, "checkpoint_every": 100000,
                   "log_every": 100000}}
SAMPLED = {  # the default per-row candidate sets, and one set shared by the batch
    "sampled": {"name": "sampled", "num_sampled": 20, "sampler": "unigram"},
    "sampled_shared": {"name": "sampled", "num_sampled": 20, "sampler": "unigram", "candidate_sets": "batch"},
}


def zipf_bigram_lines(lines: int, vocab: int, seed: int) -> list[str]:
    """`lines` lines of 9-20 words w0..w{vocab-1}: Zipf word frequencies and a bigram structure an LSTM can learn.

    Each word has SUCCESSORS distinct successors (drawn by Zipf weight); the next word is one of them, uniformly,
    with probability FOLLOW, and a Zipf draw otherwise. A line starts with a Zipf draw.
    """
    rng = np.random.default_rng(seed)
    zipf = 1.0 / np.arange(1, vocab + 1) ** ZIPF_EXPONENT
    zipf /= zipf.sum()  # (V,)
    successors = np.stack([rng.choice(vocab, SUCCESSORS, replace=False, p=zipf) for _ in range(vocab)])  # (V, K)
    text = []
    for _ in range(lines):
        word = rng.choice(vocab, p=zipf)
        words = [word]
        for _ in range(rng.integers(8, 20)):
            follow = rng.random() < FOLLOW
            word = successors[word, rng.integers(SUCCESSORS)] if follow else rng.choice(vocab, p=zipf)
            words.append(word)
        text.append(" ".join(f"w{w}" for w in words))
    return text


def run_canary(root: Path) -> dict:
    """Prepare the synthetic language under `root`, train full and sampled, and score both on the test split."""
    import tensorflow as tf

    tf.config.experimental.enable_op_determinism()
    from lmcli.config import PrepareConfig
    from lmcli.data.prepare import prepare
    from lmcli.runtime.progress import Progress
    from lmcli.serve.evaluation import evaluate
    from lmcli.train.run import train

    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(zipf_bigram_lines(LINES, VOCAB, DATA_SEED)) + "\n")
    prepare([str(corpus)], root / "data", PrepareConfig(vocab_size="max", model_type="word", valid_fraction=0.05,
                                                        test_fraction=0.1, seed=1), Progress())
    result = {}
    for name, loss in (("full", {"name": "full"}), *SAMPLED.items()):
        train(root / "data", root / name, {**TRAIN, "loss": loss})
        scores = evaluate(root / name, split="test", checkpoint="latest")
        result[name], result["unigram"] = scores["perplexity"], scores["unigram_perplexity"]
    for name in SAMPLED:
        result[f"{name}_ratio"] = result[name] / result["full"]
    return result


def test_sampled_softmax_test_perplexity_is_close_to_the_full_softmax(tmp_path):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(HERE.parent)}
    proc = subprocess.run([sys.executable, __file__, str(tmp_path)], capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads((tmp_path / "canary.json").read_text())
    print(f"quality canary: {got}")  # shown by pytest -s or -rA
    assert got["full"] < 0.5 * got["unigram"], got  # the full softmax itself learned the bigrams
    assert all(got[f"{name}_ratio"] < RATIO_BOUND for name in SAMPLED), got


if __name__ == "__main__":
    out = Path(sys.argv[1])
    (out / "canary.json").write_text(json.dumps(run_canary(out)))
