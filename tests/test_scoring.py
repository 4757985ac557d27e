"""`eval --per-line`: each line scored alone from a fresh state, checked against the model run on that line."""

import json
import math

import numpy as np
import pytest
import tensorflow as tf
from typer.testing import CliRunner

from lmcli.cli.main import app
from lmcli.data.tokenizer import Tokenizer
from lmcli.train.checkpoints import RunPaths, load_model

# Blank and whitespace-only lines are skipped; lengths differ so that batches bucket and pad; "zebra" is <unk>.
TEXT = ["the cat sees a fish", "", "a big red dog eats the small tree and the bird", "   ", "fish",
        "the zebra sees a tree", "bird bird bird", "the small cat eats a red fish", ""]
LINES = [line for line in TEXT if line.strip()]


def invoke(*args):
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("scoring") / "text.txt"
    path.write_text("\n".join(TEXT) + "\n")
    return path


def per_line(run, text_file, out, *extra):
    summary = json.loads(invoke("eval", run, "--text", text_file, "--per-line", out, *extra, "--json",
                                "--quiet").stdout)
    return summary, [json.loads(line) for line in out.read_text().splitlines()]


def line_log_probs(model, tokenizer, start_id, line):
    """(labels, their full-softmax log-probs): the model run on `start id + ids` alone, in float64 here."""
    ids = tokenizer.encode(line)
    inputs, labels = np.array([[start_id, *ids]], np.int32), np.array([*ids, tokenizer.eos_id])
    hidden, _ = model(tf.constant(inputs))  # (1, T, D)
    w, b = model.output_weights()
    logits = hidden.numpy()[0].astype(np.float64) @ w.numpy().astype(np.float64).T + b.numpy()  # (T, V)
    top = logits.max(axis=-1, keepdims=True)
    log_probs = logits - top - np.log(np.exp(logits - top).sum(axis=-1, keepdims=True))
    return labels, log_probs[np.arange(len(labels)), labels]


@pytest.mark.parametrize("padding", ["pack", "pad"])
def test_per_line_records_equal_each_line_scored_alone(tiny_run, text_file, tmp_path, padding):
    run = tiny_run(padding)
    summary, records = per_line(run, text_file, tmp_path / "lines.jsonl", "--token-logprobs")
    assert summary["scoring"] == "per-line" and summary["per_line"] == str(tmp_path / "lines.jsonl")
    model, _, _ = load_model(run, "best")
    tokenizer = Tokenizer.load(RunPaths(run).tokenizer)
    start = tokenizer.eos_id if padding == "pack" else tokenizer.bos_id
    assert [r["line"] for r in records] == list(range(len(LINES)))
    for line, record in zip(LINES, records):
        labels, want = line_log_probs(model, tokenizer, start, line)
        assert record["tokens"] == len(tokenizer.encode(line)) + 1 == len(labels)
        assert record["loglik"] == pytest.approx(want.sum(), abs=1e-4), line
        assert record["perplexity"] == pytest.approx(math.exp(-record["loglik"] / record["tokens"]), rel=1e-6)
        assert record["pieces"] == [tokenizer.id_to_piece(i) for i in labels]
        np.testing.assert_allclose(record["logprobs"], want, rtol=0, atol=1e-5)
        assert sum(record["logprobs"]) == pytest.approx(record["loglik"], abs=1e-5)
    assert "<unk>" in records[LINES.index("the zebra sees a tree")]["pieces"]
    assert summary["lines"] == len(LINES) and summary["tokens"] == sum(r["tokens"] for r in records)
    assert -summary["nll"] * summary["tokens"] == pytest.approx(sum(r["loglik"] for r in records), rel=1e-6)


def test_pad_trained_aggregate_equals_the_sum_of_the_lines(tiny_run, text_file, tmp_path):
    """A pad-trained run scores every line from a fresh state anyway, so the plain eval sums the lines."""
    run = tiny_run("pad")
    _, records = per_line(run, text_file, tmp_path / "lines.jsonl")
    plain = json.loads(invoke("eval", run, "--text", text_file, "--json", "--quiet").stdout)
    assert plain["scoring"] == "pad" and plain["tokens"] == sum(r["tokens"] for r in records)
    assert -plain["nll"] * plain["tokens"] == pytest.approx(sum(r["loglik"] for r in records), rel=1e-5)
    assert "pieces" not in records[0] and "logprobs" not in records[0]


@pytest.mark.parametrize("padding", ["pack", "pad"])
def test_per_line_records_do_not_depend_on_the_batch_size(tiny_run, text_file, tmp_path, padding):
    """A pack-trained run's plain eval carries state across lines; its per-line file must not."""
    run = tiny_run(padding)
    _, one = per_line(run, text_file, tmp_path / "one.jsonl", "--batch-size", 1, "--token-logprobs")
    _, three = per_line(run, text_file, tmp_path / "three.jsonl", "--batch-size", 3, "--token-logprobs")
    assert len(one) == len(three) == len(LINES)
    for a, b in zip(one, three):
        assert (a["line"], a["tokens"], a["pieces"]) == (b["line"], b["tokens"], b["pieces"])
        assert a["loglik"] == pytest.approx(b["loglik"], abs=1e-5)
        np.testing.assert_allclose(a["logprobs"], b["logprobs"], rtol=0, atol=1e-5)


def test_token_logprobs_needs_per_line(tiny_run, text_file):
    r = CliRunner().invoke(app, ["eval", str(tiny_run("pack")), "--text", str(text_file), "--token-logprobs"])
    assert r.exit_code == 4, r.output
    assert r.stderr.strip() == "lmcli: error: --token-logprobs needs --per-line FILE"


LAYOUTS = {  # non-default layouts: eval must rebuild them from the run's saved settings, not from defaults
    "pack": {"padding": "pack", "batch_size": 3, "seq_len": 5},
    "pad": {"padding": "pad", "batch_size": 3, "max_len": 4, "pad_side": "left", "bucket_by_length": True},
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_eval_of_a_split_equals_the_validation_of_training(tiny_data_dir, tmp_path, layout):
    """The validation perplexity that picks the best checkpoint is the one `lmcli eval` reports for it."""
    from lmcli.runtime.progress import Progress
    from lmcli.serve.exporting import export
    from lmcli.train.run import train

    run = tmp_path / "run"
    train(tiny_data_dir, run, {"model": {"embedding_dim": 8, "hidden": 16}, "data": LAYOUTS[layout],
                               "train": {"lr": 0.02, "seed": 3, "max_steps": 15, "log_every": 5}}, progress=Progress())
    records = [json.loads(line) for line in RunPaths(run).metrics.read_text().splitlines()]
    validation = [r for r in records if r["event"] == "valid"][-1]
    assert validation["step"] == 15
    export(run, tmp_path / "export", checkpoint="latest", verify=False)
    for model in (run, tmp_path / "export"):
        got = json.loads(invoke("eval", model, "--split", "valid", "--checkpoint", "latest", "--json",
                                "--quiet").stdout)
        assert got["checkpoint_step"] == 15 and got["scoring"] == layout
        assert got["perplexity"] == pytest.approx(validation["perplexity"], rel=1e-5), model
    # Whole lines are a different number, offered only when asked for (pad: lines longer than max_len are not cut).
    whole = json.loads(invoke("eval", run, "--split", "valid", "--checkpoint", "latest", "--whole-lines", "--json",
                              "--quiet").stdout)
    assert whole["scoring"] == "whole-lines" and whole["tokens"] == got["tokens"]
    assert whole["perplexity"] != pytest.approx(validation["perplexity"], rel=1e-3)


def np_top_k(logits, labels, k):
    """1 where the label is among the first k when the classes are sorted by falling logit, the label placed after
    every class tied with it (numpy's stable sort on (-logit, is_label)), else 0: (B, T)."""
    out = np.zeros(labels.shape)
    for i in np.ndindex(labels.shape):
        is_label = np.arange(logits.shape[-1]) == labels[i]
        order = np.lexsort((is_label, -logits[i]))  # last key first: by logit, then the label behind its ties
        out[i] = float(np.flatnonzero(order == labels[i])[0] < k)
    return out


def test_top1_and_top5_against_a_numpy_ranking_with_ties():
    """Logits drawn from 6 values over 12 classes, so most labels tie with other classes; padding scores 0."""
    from lmcli.model.scoring import token_scores

    rng = np.random.default_rng(0)
    logits = rng.integers(0, 6, size=(3, 40, 12)).astype(np.float32)  # (B, T, V)
    labels = rng.integers(0, 12, size=(3, 40))
    np.put_along_axis(logits, labels[..., None], rng.integers(3, 7, size=(3, 40, 1)), -1)  # labels rank high-ish
    mask = (rng.random((3, 40)) < 0.8).astype(np.float32)
    got = token_scores(tf.constant(logits), tf.constant(labels), tf.constant(mask))
    for name, k in (("top1", 1), ("top5", 5)):
        want = np_top_k(logits, labels, k) * mask
        np.testing.assert_array_equal(got[name].numpy(), want)
        assert 0.05 < want.sum() / mask.sum() < 0.95  # the draw has both outcomes
        above = (logits > np.take_along_axis(logits, labels[..., None], -1)).sum(-1)  # (B, T)
        assert np.any((above < k) * mask != want)  # and ties that decide it: ties in the label's favour would fail
    hand = np.array([[3, 3, 0, 0, 0, 0, 0],  # label (class 0) tied first with one class: rank 1
                     [2, 2, 2, 2, 1, 1, 0],  # tied first four ways: rank 3
                     [1, 5, 4, 3, 2, 9, 0],  # five above: the 6th
                     [3, 9, 9, 9, 9, 3, 0],  # four above and a tie at the boundary: rank 5
                     [1, 1, 1, 1, 1, 1, 1],  # every class tied: rank 6
                     [9, 1, 1, 1, 1, 1, 1]], np.float32)[None]  # alone at the top: rank 0, (1, 6, 7)
    scores = token_scores(tf.constant(hand), tf.zeros([1, 6], tf.int64), tf.ones([1, 6]))
    assert scores["top1"].numpy().tolist() == [[0, 0, 0, 0, 0, 1]]
    assert scores["top5"].numpy().tolist() == [[1, 1, 0, 0, 0, 1]]


def test_eval_reports_the_top1_and_top5_of_the_model_s_own_logits(tiny_run, text_file, tmp_path):
    """`lmcli eval` of a pad-trained run (each line from a fresh state) against numpy ranking of its logits."""
    run = tiny_run("pad")
    summary = json.loads(invoke("eval", run, "--text", text_file, "--json", "--quiet").stdout)
    model, _, _ = load_model(run, "best")
    tokenizer = Tokenizer.load(RunPaths(run).tokenizer)
    w, b = (t.numpy().astype(np.float64) for t in model.output_weights())
    hits, tokens = np.zeros(2), 0
    for line in LINES:
        ids = tokenizer.encode(line)
        hidden, _ = model(tf.constant([[tokenizer.bos_id, *ids]], tf.int32))  # (1, T, D)
        logits = hidden.numpy()[0].astype(np.float64) @ w.T + b  # (T, V)
        labels = np.array([*ids, tokenizer.eos_id])
        hits += [np_top_k(logits[None], labels[None], k).sum() for k in (1, 5)]
        tokens += len(labels)
    assert summary["tokens"] == tokens
    assert (summary["top1"], summary["top5"]) == pytest.approx(tuple(hits / tokens), abs=1e-9)
    assert 0 < hits[0] < hits[1] < tokens  # the numbers can tell top-1, top-4 and top-5 apart here
