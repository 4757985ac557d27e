"""Sampling: exact samplers on fake log-probs, seeded and batched generation, stop strings, eos, the CLI."""

import io
import json

import numpy as np
import pytest
import sentencepiece as spm
from typer.testing import CliRunner

from lmcli.cli.main import app
from lmcli.config import GenerateConfig
from lmcli.data.shards import open_data_dir
from lmcli.data.tokenizer import Tokenizer
from lmcli.serve.generation import choose_tokens, generate, next_token_probs

START = 3  # </s>, the start id of pack-trained runs


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    top = x.max(axis=-1, keepdims=True)
    return x - top - np.log(np.exp(x - top).sum(axis=-1, keepdims=True))


def draws(probs: np.ndarray, n: int, seed: int = 0, **cfg) -> np.ndarray:
    """n tokens drawn by choose_tokens from one distribution (one row per draw)."""
    log_probs = np.tile(np.log(probs), (n, 1))  # (n, V)
    rng = np.random.default_rng(seed)
    return choose_tokens(log_probs, GenerateConfig(**cfg), [rng] * n)


def top_p_set(probs: np.ndarray, p: float) -> set:
    """The smallest set of most likely tokens whose mass reaches p, by a plain loop."""
    kept, mass = set(), 0.0
    for i in sorted(range(len(probs)), key=lambda i: -probs[i]):
        kept.add(i)
        mass += probs[i]
        if mass >= p:
            return kept
    return kept


# A known distribution over 10 tokens, the likely ones not first, and none tied.
PROBS = np.array([0.04, 0.2, 0.005, 0.3, 0.08, 0.12, 0.015, 0.15, 0.06, 0.03])


@pytest.mark.parametrize("cfg", [dict(temperature=0), dict(temperature=1.0), dict(temperature=0.3),
                                 dict(temperature=5.0), dict(temperature=1.0, top_k=1), dict(temperature=2.0, top_k=3),
                                 dict(temperature=1.0, top_p=0.05), dict(temperature=1.0, top_p=0.99),
                                 dict(temperature=0.7, top_k=4, top_p=0.5)])
def test_samplers_on_one_hot_log_probs_are_exact(cfg):
    hot = np.array([3, 0, 7, 6, 3])
    log_probs = log_softmax(np.eye(8)[hot] * 1e9)  # (5, 8): 0 at the hot token, -1e9 elsewhere
    rngs = [np.random.default_rng(i) for i in range(len(hot))]
    for _ in range(20):
        np.testing.assert_array_equal(choose_tokens(log_probs, GenerateConfig(**cfg), rngs), hot)


def test_greedy_top_k_1_and_a_tiny_top_p_pick_the_most_likely_token():
    for cfg in (dict(temperature=0), dict(temperature=1.0, top_k=1), dict(temperature=1.0, top_p=0.01)):
        assert set(draws(PROBS, 200, **cfg)) == {3}


@pytest.mark.parametrize("k", [1, 2, 3, 5])
def test_top_k_never_leaves_the_k_most_likely_tokens(k):
    allowed = set(sorted(range(len(PROBS)), key=lambda i: -PROBS[i])[:k])
    got = draws(PROBS, 2000, seed=k, temperature=1.0, top_k=k)
    assert set(got) == allowed  # every allowed token is drawn, nothing else


@pytest.mark.parametrize("p", [0.25, 0.45, 0.6, 0.9])  # none at a cumulative mass (0.3, 0.5, 0.65, ...)
def test_top_p_never_leaves_the_nucleus(p):
    allowed = top_p_set(PROBS, p)
    got = draws(PROBS, 2000, seed=int(p * 10), temperature=1.0, top_p=p)
    assert set(got) == allowed


def test_top_p_keeps_exactly_the_smallest_prefix_reaching_p():
    probs = np.array([[0.1, 0.5, 0.15, 0.25]])  # sorted: 0.5, 0.25, 0.15, 0.1; cumulative 0.5, 0.75, 0.9, 1
    log_probs = np.log(probs)
    keep = {0.4: [0, 1, 0, 0], 0.5: [0, 1, 0, 0], 0.6: [0, 1, 0, 1], 0.74: [0, 1, 0, 1], 0.76: [0, 1, 1, 1],
            0.95: [1, 1, 1, 1]}
    for p, mask in keep.items():
        got = next_token_probs(log_probs, 1.0, 0, p)[0]
        want = np.where(mask, probs[0], 0.0) / (probs[0] * mask).sum()
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-12, err_msg=f"top_p={p}")


@pytest.mark.parametrize("temperature", [0.5, 2.0])
def test_temperature_sampling_frequencies_follow_the_tempered_distribution(temperature):
    probs = np.array([0.5, 0.25, 0.15, 0.07, 0.03])
    tempered = probs ** (1 / temperature) / (probs ** (1 / temperature)).sum()
    n = 20000
    counts = np.bincount(draws(probs, n, seed=1, temperature=temperature), minlength=len(probs))

    def chi2(dist):
        return float(((counts - n * dist) ** 2 / (n * dist)).sum())

    assert chi2(tempered) < 30  # 4 degrees of freedom: P(chi2 > 30) ~ 5e-6 for the right distribution
    assert chi2(probs) > 300  # and the untempered distribution is clearly rejected


# ---- generation with fake backends and the tiny data dir's word tokenizer ------------------------------------------


@pytest.fixture(scope="module")
def tok(tiny_data_dir):
    return open_data_dir(tiny_data_dir).tokenizer()


class HashBackend:
    """Log-probs looked up by a hash of every real id so far (the state), so padding mistakes change them."""

    def __init__(self, vocab: int, seed: int = 0, eos_logit: float = -30.0) -> None:
        logits = np.random.default_rng(seed).normal(0, 1.5, size=(101, vocab))  # (K, V)
        logits[:, :3] = -30.0  # never pad, unk or bos
        logits[:, 3] = eos_logit
        self.table = log_softmax(logits).astype(np.float32)
        self.steps = 0

    def _mix(self, h, ids):
        return (h * 31 + ids + 1) % len(self.table)

    def prefill(self, ids, mask):
        h = np.zeros(len(ids), np.int64)
        for t in range(ids.shape[1]):
            h = np.where(mask[:, t], self._mix(h, ids[:, t]), h)
        return self.table[h], h

    def step(self, ids, state):
        self.steps += 1
        h = self._mix(state, np.asarray(ids, np.int64))
        return self.table[h], h


class ScriptBackend:
    """Every row emits the same scripted ids, one per step (for greedy decoding); then repeats the last."""

    def __init__(self, script, vocab: int) -> None:
        self.script, self.vocab = list(script), vocab

    def _log_probs(self, k, batch):
        hot = np.eye(self.vocab)[[self.script[min(k, len(self.script) - 1)]] * batch]
        return log_softmax(hot * 1e9).astype(np.float32)

    def prefill(self, ids, mask):
        return self._log_probs(0, len(ids)), 0

    def step(self, ids, state):
        return self._log_probs(state + 1, len(ids)), state + 1


def run(backend, tok, prompts, stops=(), **cfg):
    """generate() with the streamed text collected per row."""
    streamed = {}
    out = generate(backend, tok, prompts, GenerateConfig(**cfg), START, stops,
                   on_text=lambda r, text: streamed.__setitem__(r, streamed.get(r, "") + text))
    return out, [streamed.get(r, "") for r in range(len(out))]


def test_a_seed_gives_a_prompt_the_same_text_alone_and_anywhere_in_a_batch(tok):
    backend = HashBackend(tok.vocab_size)
    cfg = dict(max_tokens=12, temperature=1.0, seed=5, num_samples=2)
    alone, _ = run(backend, tok, ["the cat"], **cfg)
    first, _ = run(backend, tok, ["the cat", "a big red dog sees", "fish"], **cfg)
    middle, _ = run(backend, tok, ["a big red dog sees", "the cat", "fish"], **cfg)
    last, _ = run(backend, tok, ["fish", "a big red dog sees", "the cat"], **cfg)
    texts = [s["text"] for s in alone]
    assert [s["text"] for s in first[0:2]] == [s["text"] for s in middle[2:4]] == [s["text"] for s in last[4:6]] \
        == texts
    assert texts[0] != texts[1]  # the two samples of one prompt differ
    assert all(s["tokens"] == 12 and s["stopped"] == "length" for s in alone)
    other, _ = run(backend, tok, ["the cat"], **{**cfg, "seed": 6})
    assert [s["text"] for s in other] != texts
    assert [s["sample"] for s in middle] == [0, 1, 0, 1, 0, 1]
    assert [s["prompt"] for s in middle] == ["a big red dog sees"] * 2 + ["the cat"] * 2 + ["fish"] * 2


def test_max_tokens_bounds_every_row(tok):
    backend = HashBackend(tok.vocab_size, seed=1)
    out, streamed = run(backend, tok, ["the", "a dog"], max_tokens=7, temperature=1.0, seed=0)
    for sample, shown in zip(out, streamed):
        assert sample["tokens"] == 7 and sample["stopped"] == "length"
        assert len(sample["continuation"].split()) == 7  # one word per token with this tokenizer
        assert shown == sample["continuation"] and sample["text"] == sample["prompt"] + shown
    assert backend.steps <= 7


def test_a_multi_token_stop_string_ends_the_row_and_is_never_shown(tok):
    script = tok.encode("cat sees a fish the dog eats a tree")
    out, streamed = run(ScriptBackend(script, tok.vocab_size), tok, ["the"], stops=["a fish"], max_tokens=20,
                        temperature=0)
    assert out[0]["continuation"] == " cat sees " and out[0]["text"] == "the cat sees "
    assert out[0]["stopped"] == "stop" and out[0]["tokens"] == 4  # "a" and "fish" were generated, then cut
    assert streamed[0] == out[0]["continuation"]


def test_text_held_back_for_a_stop_string_is_shown_when_the_row_ends_otherwise(tok):
    eos = tok.eos_id
    for script, end in ((tok.encode("cat sees a") + [eos], "eos"), (tok.encode("cat sees a"), "length")):
        out, streamed = run(ScriptBackend(script, tok.vocab_size), tok, ["the"], stops=["a fish"], temperature=0,
                            max_tokens=len(script))
        assert out[0]["continuation"] == " cat sees a" and out[0]["stopped"] == end
        assert streamed[0] == " cat sees a"  # the held-back "a" is flushed, not lost


def test_eos_ends_a_row_and_the_others_go_on(tok):
    eos = tok.eos_id

    class EosForOneRow(HashBackend):
        """Row 0 is sent to eos after its second token; row 1 never sees eos."""

        def step(self, ids, state):
            log_probs, h = super().step(ids, state)
            log_probs = log_probs.copy()
            if self.steps == 2:
                log_probs[0] = log_softmax(np.eye(self.table.shape[1])[eos] * 1e9)
            return log_probs, h

    out, streamed = run(EosForOneRow(tok.vocab_size), tok, ["the", "the big"], max_tokens=6, temperature=1.0,
                        seed=2)
    assert out[0]["stopped"] == "eos" and out[0]["tokens"] == 2 and "</s>" not in out[0]["text"]
    assert out[1]["stopped"] == "length" and out[1]["tokens"] == 6
    assert streamed == [s["continuation"] for s in out]


def test_characters_split_over_byte_pieces_are_decoded_once(tmp_path):
    """A byte-fallback tokenizer (allowed by `prepare --tokenizer`) spells rare characters as byte pieces."""
    writer = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(["the cat sees a fish"] * 50 + ["café"]),
                                   model_writer=writer, vocab_size=300, model_type="bpe", byte_fallback=True,
                                   character_coverage=0.99, pad_id=0, unk_id=1, bos_id=2, eos_id=3, minloglevel=2)
    tok = Tokenizer(writer.getvalue())
    ids = tok.encode("the café ü")
    assert any(tok.id_to_piece(i).startswith("<0x") for i in ids)  # é and ü are byte pieces here
    for script, end in ((ids[1:] + [tok.eos_id], "eos"), (ids[1:-1], "length")):
        out, streamed = run(ScriptBackend(script, tok.vocab_size), tok, ["the"], temperature=0,
                            max_tokens=len(script))
        want = tok.decode(ids[:len(script) + 1])[len("the"):]  # " café ü" or " café \ufffd" (cut inside ü)
        assert out[0]["continuation"] == want and out[0]["stopped"] == end
        assert streamed[0] == want


# ---- the CLI on a tiny trained run -------------------------------------------------------------------------------


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def run_dir(tiny_run):
    return tiny_run("pack")


def test_generate_prompts_file_json_and_jsonl(run_dir, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("the cat\n\na big dog\nthe\n")
    args = ["generate", run_dir, "--prompts", prompts, "--max-tokens", 8, "--seed", 3, "--num-samples", 2]
    r = invoke(*args, "--json")
    assert r.exit_code == 0, r.output
    result = json.loads(r.stdout)
    samples = result["samples"]
    assert [(s["prompt"], s["sample"]) for s in samples] == [(p, i) for p in ("the cat", "a big dog", "the")
                                                            for i in (0, 1)]
    assert all(s["text"] == s["prompt"] + s["continuation"] and 0 <= s["tokens"] <= 8 for s in samples)
    assert any(s["tokens"] > 0 for s in samples)
    assert all(s["seed"] == 3 for s in samples)

    r = invoke(*args)
    assert r.exit_code == 0, r.output
    assert [json.loads(line) for line in r.stdout.splitlines()] == samples


def test_generate_stop_cuts_before_the_stop_string(run_dir):
    for seed in range(20):  # a seed whose sample has at least three words (the tiny model often ends early)
        base = ["generate", run_dir, "--prompt", "the", "--seed", seed, "--max-tokens", 12]
        r = invoke(*base, "--json")
        assert r.exit_code == 0, r.output
        continuation = json.loads(r.stdout)["samples"][0]["continuation"]
        words = continuation.split()
        if len(words) >= 3:
            break
    else:
        pytest.fail("no sample of three words in 20 seeds")
    stop = " ".join(words[1:3])  # two tokens
    want = continuation[:continuation.index(stop)]

    r = invoke(*base, "--stop", "never seen", "--stop", stop, "--json")
    assert r.exit_code == 0, r.output
    sample = json.loads(r.stdout)["samples"][0]
    assert sample["continuation"] == want and sample["stopped"] == "stop"
    r = invoke(*base, "--stop", stop)  # streamed to stdout
    assert r.exit_code == 0, r.output
    assert r.stdout == "the" + want + "\n"


@pytest.mark.parametrize("args,message", [(["--prompt", ""], "the prompt is empty"),
                                          (["--prompt", "   "], "the prompt is empty"),
                                          (["--prompts", "{empty}"], "has no prompts"),
                                          (["--prompt", "the", "--stop", ""], "--stop strings must not be empty")])
def test_generate_rejects_empty_prompts_with_one_line_and_exit_code_4(run_dir, tmp_path, args, message):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    r = invoke("generate", run_dir, *[a.replace("{empty}", str(empty)) for a in args])
    assert r.exit_code == 4, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lmcli: error:") and message in lines[0]
    assert "Traceback" not in r.output
