"""`eval --per-line`: each line scored alone from a fresh state, checked against the model run on that line."""

import json
import math

import numpy as np
import pytest
import tensorflow as tf
from typer.testing import CliRunner

from lmcli.checkpoints import RunPaths, load_model
from lmcli.cli.main import app
from lmcli.data.tokenizer import Tokenizer

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
    from lmcli.exporting import export
    from lmcli.progress import Progress
    from lmcli.training import train

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
