"""Terms and regularisers composed with every strategy, through the Trainer: they train, their weights follow the
clock, they never reach evaluation or exports, and a killed run resumes to the uninterrupted run's weights."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lmcli.runtime.progress import Progress
from lmcli.serve.evaluation import evaluate
from lmcli.serve.exporting import export
from lmcli.train.checkpoints import RunPaths, load_model
from lmcli.train.run import train

HERE = Path(__file__).resolve().parent
TERM_OPTIONS = {
    "embedding": ({"aux_loss": ["embedding"], "aux_weight": 0.5}, {}),
    "ar": ({"aux_loss": ["ar"]}, {}),
    "tar": ({"aux_loss": ["tar"]}, {}),
    "kl": ({"kl_warmup_epochs": 0.5}, {"variational_embedding": True}),
}
STRATEGY_OPTIONS = {"full": {}, "sampled": {"num_sampled": 6}, "tapas": {"num_sampled": 8, "num_resampled": 4}}


def options(loss="full", terms=None, model=None, train_opts=None, data=None):
    return {"model": {"embedding_dim": 8, "hidden": 16, **(model or {})},
            "data": {"batch_size": 8, "seq_len": 6, **(data or {})},
            "loss": {"name": loss, **STRATEGY_OPTIONS[loss]}, "terms": terms or {},
            "train": {"lr": 0.05, "seed": 4, "epochs": 2, "log_every": 4, **(train_opts or {})}}


def records(run, event):
    return [r for r in map(json.loads, RunPaths(run).metrics.read_text().splitlines()) if r["event"] == event]


@pytest.mark.parametrize("term", sorted(TERM_OPTIONS))
@pytest.mark.parametrize("loss", sorted(STRATEGY_OPTIONS))
def test_each_term_with_each_strategy_lowers_validation_perplexity(tiny_data_dir, tmp_path, loss, term):
    """An untrained model is near uniform over the 16 classes; two epochs with the term on reach a validation
    perplexity near the grammar's (about 2), and the term is logged with its weight next to the strategy's loss."""
    terms, model = TERM_OPTIONS[term]
    out = train(tiny_data_dir, tmp_path / "r", options(loss, terms, model), progress=Progress())
    valid = [r["perplexity"] for r in records(tmp_path / "r", "valid")]
    assert len(valid) == 2 and valid[-1] < 4.0, valid
    last = records(tmp_path / "r", "train")[-1]
    assert {term, f"{term}_weight", "strategy_loss", "loss", "lr"} <= set(last)
    assert out["terms"] == [term]
    if term != "kl":
        want = last["strategy_loss"] + last[f"{term}_weight"] * last[term]
        assert last["loss"] == pytest.approx(want, rel=1e-4)


def test_variational_embedding_stays_out_of_evaluation_and_exports(tiny_data_dir, tmp_path):
    run = tmp_path / "r"
    train(tiny_data_dir, run, options("sampled", {"kl_weight": 0.5}, {"variational_embedding": True,
                                                                     "embedding_dropout": 0.2}), progress=Progress())
    first, second = evaluate(run, split="valid"), evaluate(run, split="valid")
    assert first["perplexity"] == second["perplexity"]  # no noise outside training
    model = load_model(run, "best")[0]
    assert model.embedding.log_alpha is not None
    check = export(run, tmp_path / "export", verify=True)  # reloads without keras, compares log-probs (1e-5)
    assert check["verified"] and check["max_abs_diff"] <= 1e-5
    from_export = evaluate(tmp_path / "export", split="valid")
    assert from_export["perplexity"] == pytest.approx(first["perplexity"], rel=1e-5)
    meta = json.loads((tmp_path / "export" / "lmcli.json").read_text())
    assert meta["model"]["variational_embedding"] is True
    import tensorflow as tf

    loaded = tf.saved_model.load(str(tmp_path / "export"))
    np.testing.assert_array_equal(loaded.embedding.numpy(), model.embedding.embeddings.numpy())  # the means theta
    index = (tmp_path / "export" / "variables" / "variables.index").read_bytes()
    assert b"embedding" in index and b"alpha" not in index


def test_kl_weight_follows_the_warmup_at_epoch_boundaries(tiny_data_dir, tmp_path):
    run = tmp_path / "r"
    out = train(tiny_data_dir, run, options("full", {"kl_weight": 0.6, "kl_warmup_epochs": 1.5},
                                            {"variational_embedding": True}, {"log_every": 1}), progress=Progress())
    per_epoch = out["steps"] // 2
    weights = [r["kl_weight"] for r in records(run, "train")]
    fraction = [(s // per_epoch) + (s % per_epoch) / per_epoch for s in range(out["steps"])]  # before step s + 1
    np.testing.assert_allclose(weights, [0.6 * min(1.0, f / 1.5) for f in fraction], rtol=1e-5, atol=1e-7)
    assert weights[per_epoch] == pytest.approx(0.4, rel=1e-5)  # the first step of epoch 2: 1 / 1.5 of the weight
    # the value: sum of the words' KL at the initial log alpha (-6 for all) / the training tokens of an epoch
    from lmcli.data.shards import open_data_dir
    from lmcli.terms.variational import kl_per_word

    tokens = len(open_data_dir(tiny_data_dir).split("train").ids)
    first = records(run, "train")[0]["kl"]
    assert first == pytest.approx(16 * float(kl_per_word(np.float32([-6.0]))[0]) / tokens, rel=1e-5)


def lmcli(*args, mode=None, at=0):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(HERE.parent)}
    cmd = ([sys.executable, str(HERE / "kill_driver.py"), mode, str(at), "--"] if mode
           else [sys.executable, "-m", "lmcli"])
    return subprocess.run(cmd + [str(a) for a in args], capture_output=True, text=True, env=env, timeout=300)


# One shared candidate set: the kill points below sit around the one plateau decay this schedule makes (end of epoch
# 5); per-row sets train differently and decay at other epochs.
ALL_ON = ["--embedding-dim", 8, "--hidden", 16, "--batch-size", 8, "--seq-len", 6, "--lr", 0.1, "--dropout", 0.1,
          "--epochs", 6, "--seed", 5, "--checkpoint-every", 7, "--log-every", 5, "--quiet", "--loss", "sampled",
          "--num-sampled", 5, "--candidate-sets", "batch", "--aux-loss", "embedding", "--aux-loss", "tar",
          "--variational-embedding", "--embedding-dropout", 0.2, "--lr-schedule", "plateau", "--lr-decay", 2]


def test_sigkill_and_resume_with_terms_a_variational_embedding_and_plateau(tiny_data_dir, tmp_path):
    """Killed before a checkpoint in epoch 4 and after one in epoch 6 (after the plateau schedule halved the rate
    at the end of epoch 5), the run resumes to the uninterrupted run's weights."""
    ref = lmcli("train", tiny_data_dir, "--run-dir", tmp_path / "ref", *ALL_ON)
    assert ref.returncode == 0, ref.stderr[-2000:]
    rates = sorted({r["lr"] for r in records(tmp_path / "ref", "train")})
    assert rates == pytest.approx([0.05, 0.1])  # the plateau decay happened, so the resume must restore it
    for mode, at in (("before-save", 112), ("after-save", 175)):
        r = lmcli("train", tiny_data_dir, "--run-dir", tmp_path / "run", *ALL_ON, mode=mode, at=at)
        assert r.returncode == -signal.SIGKILL, (mode, r.stderr[-2000:])
    r = lmcli("train", tiny_data_dir, "--run-dir", tmp_path / "run", *ALL_ON)
    assert r.returncode == 0, r.stderr[-2000:]
    a, b = load_model(tmp_path / "ref", "latest"), load_model(tmp_path / "run", "latest")
    assert a[2] == b[2]
    for x, y in zip(a[0].weights, b[0].weights):
        np.testing.assert_allclose(x.numpy(), y.numpy(), rtol=0, atol=1e-6)
