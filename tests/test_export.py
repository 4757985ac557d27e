"""`lmcli export`: the SavedModel reloads with TensorFlow alone and computes what the checkpoint computes.

The exports are reloaded in a subprocess where `import keras` and `import lmcli` fail, and driven the way a
client would: signatures by name, the LSTM state carried through `step` by its named tensors only.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from typer.testing import CliRunner

import lmcli.serve.exporting
from lmcli.cli.main import app
from lmcli.data.tokenizer import Tokenizer
from lmcli.runtime.errors import OutputError
from lmcli.serve.exporting import export
from lmcli.train.checkpoints import RunPaths, load_model

SIGNATURES = {"log_probs", "score", "init_state", "step", "serving_default"}
META_KEYS = {"format", "format_version", "lmcli_version", "checkpoint_step", "checkpoint", "loss_trained", "model",
             "data", "data_dir", "vocab_size", "special_ids", "start_id", "state_names", "tokenizer",
             "tokenizer_sha256", "signatures"}
# name -> (padding, model overrides): pack, pad, a tied and an untied projection, 1 and 2 layers. The first is
# trained and exported by `lmcli train --export-on-finish`, the second by `tiny_run` and `export()`.
VARIANTS = {"pack-proj-tied": ("pack", {"proj_dim": 8, "tie_embeddings": True}),
            "pad-2-layers-proj": ("pad", {"layers": 2, "proj_dim": 12})}
LENGTHS = np.array([9, 6, 2, 1], np.int32)  # right-padded rows of a (4, 9) batch; 1 = the start id alone

# A client with nothing but TensorFlow: keras and lmcli cannot be imported.
CLIENT = r"""
import json, sys
for blocked in ("keras", "tf_keras", "lmcli"):
    sys.modules[blocked] = None
import numpy as np
import tensorflow as tf

report = {}
for line in sys.stdin:  # one job per line, sent as each export is written; TensorFlow is imported meanwhile
    batch_file, export_dir, out_file = json.loads(line)
    ids, padded, lengths = (np.load(batch_file)[k] for k in ("ids", "padded", "lengths"))
    sig = tf.saved_model.load(export_dir).signatures
    state = dict(sig["init_state"](batch_size=tf.constant(len(ids), tf.int32)))
    names = sorted(state)
    steps = []
    for t in range(ids.shape[1]):
        out = sig["step"](ids=tf.constant(ids[:, t]), **state)
        steps.append(out["log_probs"].numpy())
        state = {k: out[k] for k in state}
    scored = sig["score"](ids=tf.constant(padded), lengths=tf.constant(lengths))
    np.savez(out_file, log_probs=sig["log_probs"](ids=tf.constant(ids))["log_probs"].numpy(),
             serving_default=sig["serving_default"](ids=tf.constant(ids))["log_probs"].numpy(),
             steps=np.stack(steps, axis=1), loglik=scored["loglik"].numpy(), tokens=scored["tokens"].numpy())
    report[export_dir] = {"signatures": sorted(sig), "state": names}
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("keras", "tf_keras", "lmcli") and sys.modules[m])
print(json.dumps({"exports": report, "loaded": loaded}))
"""

# Stands in for the verification's reload process (same argv and output contract), without TensorFlow.
WRONG_RELOAD = r"""
import json, sys
import numpy as np
vocab = json.load(open(sys.argv[1] + "/lmcli.json"))["vocab_size"]
ids = np.load(sys.argv[2])
np.save(sys.argv[3], np.full(ids.shape + (vocab,), -np.log(vocab), np.float32))
print(json.dumps({"signatures": ["init_state", "log_probs", "score", "serving_default", "step"]}))
"""


def invoke(*args):
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result


def checkpoint_log_probs(run, ids):
    """Full-softmax log-probs of the run's best checkpoint, computed here in float64 from W and b."""
    model, _, _ = load_model(run, "best")
    hidden, _ = model(tf.constant(ids))  # (B, T, D)
    w, b = model.output_weights()
    logits = hidden.numpy().astype(np.float64) @ w.numpy().astype(np.float64).T + b.numpy()  # (B, T, V)
    top = logits.max(axis=-1, keepdims=True)
    return logits - top - np.log(np.exp(logits - top).sum(axis=-1, keepdims=True))


def leftovers(parent):
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


@pytest.fixture(scope="module")
def exported(tiny_data_dir, tiny_run, tmp_path_factory):
    """{variant: (run dir, export dir, ids, client report, client outputs)}, plus "trained": train's JSON."""
    root = tmp_path_factory.mktemp("exports")
    # The client imports TensorFlow while the runs train and export here, and reloads each export as it comes.
    client = subprocess.Popen([sys.executable, "-c", CLIENT], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    rng = np.random.default_rng(0)
    runs, batches = {}, {}

    def send(name, run, out):
        meta = json.loads((out / "lmcli.json").read_text())
        ids = rng.integers(4, meta["vocab_size"], size=(len(LENGTHS), 9)).astype(np.int32)  # (B, T)
        ids[:, 0] = meta["start_id"]
        garbage = rng.integers(0, meta["vocab_size"], size=ids.shape)  # past each row's length
        padded = np.where(np.arange(9) < LENGTHS[:, None], ids, garbage).astype(np.int32)
        np.savez(root / f"{name}.in.npz", ids=ids, padded=padded, lengths=LENGTHS)
        client.stdin.write(json.dumps([str(root / f"{name}.in.npz"), str(out), str(root / f"{name}.out.npz")]) + "\n")
        client.stdin.flush()
        runs[name], batches[name] = (run, out), ids

    run = tiny_run("pad", layers=2, proj_dim=12)
    export(run, root / "pad-2-layers-proj", verify=False)
    send("pad-2-layers-proj", run, root / "pad-2-layers-proj")
    trained = json.loads(invoke("train", tiny_data_dir, "--run-dir", root / "pack-run", "--embedding-dim", 8,
                                "--hidden", 16, "--proj-dim", 8, "--tie-embeddings", "--batch-size", 4, "--seq-len",
                                6, "--max-steps", 20, "--checkpoint-every", 10, "--lr", 0.02, "--export-on-finish",
                                root / "pack-proj-tied", "--json", "--quiet").stdout)
    send("pack-proj-tied", root / "pack-run", root / "pack-proj-tied")
    stdout, stderr = client.communicate(timeout=300)
    assert client.returncode == 0, stderr[-3000:]
    report = json.loads(stdout.strip().splitlines()[-1])
    result = {name: (run, out, batches[name], {"loaded": report["loaded"], **report["exports"][str(out)]},
                     dict(np.load(root / f"{name}.out.npz"))) for name, (run, out) in runs.items()}
    return {**result, "trained": trained}


@pytest.mark.parametrize("variant", VARIANTS)
def test_export_reloads_without_keras_and_matches_the_checkpoint(exported, variant):
    run, out, ids, report, got = exported[variant]
    assert report["loaded"] == []
    assert SIGNATURES <= set(report["signatures"])
    layers = VARIANTS[variant][1].get("layers", 1)
    assert report["state"] == sorted(f"{k}_{i}" for i in range(layers) for k in "hc")

    want = checkpoint_log_probs(run, ids)  # (B, T, V)
    np.testing.assert_allclose(got["log_probs"], want, rtol=0, atol=1e-5)
    np.testing.assert_allclose(got["serving_default"], want, rtol=0, atol=1e-5)
    np.testing.assert_allclose(got["steps"], want, rtol=0, atol=1e-5)  # token by token, state carried

    labels = np.take_along_axis(want[:, :-1], ids[:, 1:, None], axis=-1)[..., 0]  # (B, T - 1)
    real = np.arange(ids.shape[1] - 1) < (LENGTHS - 1)[:, None]
    np.testing.assert_array_equal(got["tokens"], LENGTHS - 1)
    np.testing.assert_allclose(got["loglik"], np.where(real, labels, 0.0).sum(axis=1), rtol=0, atol=1e-4)
    assert got["loglik"][-1] == 0.0 and np.all(got["loglik"][:-1] < 0)


@pytest.mark.parametrize("variant", VARIANTS)
def test_export_dir_holds_the_tokenizer_and_the_metadata(exported, variant):
    run, out, _, _, _ = exported[variant]
    paths = RunPaths(run)
    assert (out / "assets" / "tokenizer.model").read_bytes() == paths.tokenizer.read_bytes()
    meta = json.loads((out / "lmcli.json").read_text())
    assert META_KEYS <= set(meta)
    tokenizer = Tokenizer.load(paths.tokenizer)
    _, cfg, step = load_model(run, "best")
    padding = VARIANTS[variant][0]
    assert meta["format"] == "lmcli-export" and meta["checkpoint_step"] == step and meta["checkpoint"] == "best"
    assert meta["model"] == cfg.to_dict()["model"] and meta["data"]["padding"] == padding
    assert meta["vocab_size"] == tokenizer.vocab_size and meta["special_ids"] == tokenizer.special_ids()
    assert meta["start_id"] == (tokenizer.eos_id if padding == "pack" else tokenizer.bos_id)
    assert meta["tokenizer"] == "assets/tokenizer.model" and meta["tokenizer_sha256"] == tokenizer.sha256
    assert set(meta["signatures"]) == SIGNATURES and meta["loss_trained"] == "full"


def test_export_refuses_an_existing_dir_unless_forced(exported, tmp_path):
    run = exported["pack-proj-tied"][0]
    out = tmp_path / "export"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(OutputError, match="exists"):
        export(run, out, verify=False)
    assert [p.name for p in out.iterdir()] == ["keep.txt"] and (out / "keep.txt").read_text() == "mine"

    result = export(run, out, verify=False, force=True)
    assert result["export_dir"] == str(out)
    assert (out / "saved_model.pb").exists() and not (out / "keep.txt").exists()
    assert leftovers(tmp_path) == []


def test_failed_verification_leaves_no_export_and_no_temporary_dir(exported, tmp_path, monkeypatch):
    run = exported["pack-proj-tied"][0]
    # The reload process answers uniform log-probs, as a broken export would: the comparison must catch it.
    monkeypatch.setattr(lmcli.serve.exporting, "_VERIFY", WRONG_RELOAD)
    with pytest.raises(OutputError, match="log_probs differ from the checkpoint"):
        export(run, tmp_path / "export")
    assert sorted(p.name for p in tmp_path.iterdir()) == []

    previous = tmp_path / "previous"
    previous.mkdir()
    (previous / "keep.txt").write_text("mine")
    with pytest.raises(OutputError, match="log_probs differ from the checkpoint"):
        export(run, previous, force=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["previous"]
    assert [p.name for p in previous.iterdir()] == ["keep.txt"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_eval_of_the_export_equals_eval_of_the_run(exported, variant, tmp_path):
    run, out, _, _, _ = exported[variant]
    text = tmp_path / "text.txt"
    text.write_text("the cat sees a fish\n\nthe big dog eats a tree\na red bird sees the cat\n")
    for source in (["--split", "test"], ["--text", text]):
        a, b = (json.loads(invoke("eval", m, *source, "--json", "--quiet").stdout) for m in (run, out))
        assert (a["model_kind"], b["model_kind"]) == ("run", "export")
        assert a["tokens"] == b["tokens"] > 0 and a["lines"] == b["lines"]
        assert b["perplexity"] == pytest.approx(a["perplexity"], rel=1e-6)
        assert b["top1"] == pytest.approx(a["top1"], abs=1e-9) and b["top5"] == pytest.approx(a["top5"], abs=1e-9)
        assert b["checkpoint_step"] == a["checkpoint_step"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_generate_from_the_export_equals_generate_from_the_run(exported, variant, tmp_path):
    run, out, _, _, _ = exported[variant]
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("the big\na small red cat sees\nfish\n")  # left-padded to the longest in one batch
    args = ["--prompts", prompts, "--max-tokens", 15, "--seed", 11, "--num-samples", 2, "--json"]
    a, b = (json.loads(invoke("generate", m, *args).stdout)["samples"] for m in (run, out))
    assert [s["text"] for s in a] == [s["text"] for s in b]
    assert len({s["continuation"] for s in a}) > 1  # sampled, not greedy: the seeds differ per sample


def test_train_export_on_finish_writes_a_verified_export(exported):
    """The export itself was reloaded by the keras-free client above; here: train reports it, no leftovers."""
    run, out, _, report, _ = exported["pack-proj-tied"]
    trained = exported["trained"]
    assert trained["steps"] == 20 and trained["export"]["export_dir"] == str(out)
    assert trained["export"]["verified"] is True and trained["export"]["max_abs_diff"] <= 1e-5
    assert trained["export"]["checkpoint_step"] == json.loads((out / "lmcli.json").read_text())["checkpoint_step"]
    assert SIGNATURES <= set(report["signatures"]) and leftovers(out.parent) == []
