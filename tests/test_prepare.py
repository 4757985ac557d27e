"""lmcli.data.prepare: round trips, recounts, deterministic splits, inputs, errors and atomic output."""

from __future__ import annotations

import errno
import gzip
import io
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm

from lmcli.config import PrepareConfig
from lmcli.data import writer
from lmcli.data.prepare import prepare
from lmcli.data.shards import open_data_dir
from lmcli.runtime.errors import ConfigError, InputError, OutputError, RunDirError
from lmcli.runtime.progress import Progress, Task

WORD = PrepareConfig(vocab_size=60, model_type="word", valid_fraction=0.1, test_fraction=0.1,
                     seed=7, shard_tokens=700)
UNIGRAM = PrepareConfig(vocab_size=80, model_type="unigram", character_coverage=1.0, valid_fraction=0.1,
                        test_fraction=0.1, seed=7)


def run(inputs, out, cfg=WORD, **kw):
    return prepare([str(p) for p in inputs], Path(out), cfg, Progress(), **kw)


def reference_splits(n: int, seed: int, valid_fraction: float, test_fraction: float) -> list[str]:
    """The documented split rule, re-implemented with Python ints (splitmix64, 53-bit uniform)."""
    mask = (1 << 64) - 1

    def mix(z: int) -> int:
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        return z ^ (z >> 31)

    key = mix(seed & mask)
    out = []
    for i in range(n):
        u = (mix((key + (i + 1) * 0x9E3779B97F4A7C15) & mask) >> 11) / float(1 << 53)
        out.append("valid" if u < valid_fraction
                   else "test" if u < valid_fraction + test_fraction else "train")
    return out


def stored_lines(data, name: str) -> list[str]:
    """Decode every stored line of a split, checking that each ends with exactly one eos."""
    tok = data.tokenizer()
    split = data.split(name)
    out = []
    for i in range(split.lines):
        ids = split.line(i)
        assert ids[-1] == tok.eos_id and tok.eos_id not in ids[:-1]
        out.append(tok.decode(ids[:-1]))
    return out


def file_bytes(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir()) if p.name != "manifest.json"}


def manifest(d: Path) -> dict:
    m = json.loads((d / "manifest.json").read_text())
    m.pop("created")
    return m


@pytest.mark.parametrize("cfg", [UNIGRAM, WORD], ids=["unigram", "word"])
def test_round_trip_split_rule_and_recounts(tmp_path, text_lines, write_lines, cfg):
    corpus = write_lines("corpus.txt", text_lines)
    summary = run([corpus], tmp_path / "data", cfg)
    data = open_data_dir(tmp_path / "data")
    tok = data.tokenizer()
    m = json.loads((tmp_path / "data" / "manifest.json").read_text())

    rule = reference_splits(len(text_lines), cfg.seed, cfg.valid_fraction, cfg.test_fraction)
    expected = {s: [line for line, r in zip(text_lines, rule, strict=True) if r == s]
                for s in ("train", "valid", "test")}
    assert all(expected[s] for s in expected)
    counts = np.zeros(tok.vocab_size, dtype=np.int64)
    for s, lines in expected.items():
        assert stored_lines(data, s) == lines
        tokens = sum(len(tok.encode(line)) + 1 for line in lines)
        nbytes = sum(len(line.encode()) + 1 for line in lines)
        assert (m["splits"][s]["lines"], m["splits"][s]["tokens"], m["splits"][s]["bytes"]) == (
            len(lines), tokens, nbytes)
        assert summary["splits"][s] == {"lines": len(lines), "tokens": tokens, "bytes": nbytes}
        if s == "train":
            for line in lines:
                for i in [*tok.encode(line), tok.eos_id]:
                    counts[i] += 1
    assert m["unigram_counts"] == counts.tolist()
    np.testing.assert_array_equal(data.unigram_counts, counts)
    assert m["tokenizer"] | {"sha256": None} == {
        "file": "tokenizer.model", "sha256": None, "model_type": cfg.model_type, "vocab_size": cfg.vocab_size,
        "pad_id": 0, "unk_id": 1, "bos_id": 2, "eos_id": 3, "trained": True}
    assert [tok.id_to_piece(i) for i in range(4)] == ["<pad>", "<unk>", "<s>", "</s>"]
    assert summary["tokenizer_sha256"] == m["tokenizer"]["sha256"] == data.tokenizer_sha256
    assert json.loads(json.dumps(summary)) == summary


def test_split_is_deterministic_and_depends_on_seed(tmp_path, text_lines, write_lines):
    corpus = write_lines("corpus.txt", text_lines)
    run([corpus], tmp_path / "a")
    run([corpus], tmp_path / "b")
    assert manifest(tmp_path / "a") == manifest(tmp_path / "b")
    assert file_bytes(tmp_path / "a") == file_bytes(tmp_path / "b")
    run([corpus], tmp_path / "c", PrepareConfig(**{**WORD.__dict__, "seed": 8}))
    valid_a, valid_c = (stored_lines(open_data_dir(tmp_path / d), "valid") for d in "ac")
    assert valid_a != valid_c


def test_valid_and_test_files_route_lines(tmp_path, text_lines, write_lines):
    train, valid, test = text_lines[:300], text_lines[300:350], text_lines[350:]
    paths = [write_lines("train.txt", train), write_lines("valid.txt", valid), write_lines("test.txt", test)]
    run([paths[0]], tmp_path / "data", valid_files=[str(paths[1])], test_files=[str(paths[2])])
    data = open_data_dir(tmp_path / "data")
    assert [stored_lines(data, s) for s in ("train", "valid", "test")] == [train, valid, test]

    for given, other in (("valid", "test"), ("test", "valid")):
        extra = {f"{given}_files": [str(paths[1])]}
        run([paths[0], paths[2]], tmp_path / given, **extra)
        data = open_data_dir(tmp_path / given)
        assert stored_lines(data, "train") == train + test and stored_lines(data, given) == valid
        assert not data.has_split(other)
        with pytest.raises(RunDirError, match=f"no {other} split"):
            data.split(other)


def test_gzip_and_stdin_give_the_same_shards(tmp_path, text_lines, write_lines, monkeypatch):
    plain = write_lines("corpus.txt", text_lines)
    gz = write_lines("corpus.txt.gz", text_lines, gz=True)
    assert gzip.decompress(gz.read_bytes()) == plain.read_bytes()
    run([plain], tmp_path / "plain")
    run([gz], tmp_path / "gz")
    monkeypatch.setattr(sys, "stdin", type("Stdin", (), {"buffer": io.BytesIO(plain.read_bytes())})())
    run(["-"], tmp_path / "stdin")
    for other in ("gz", "stdin"):
        assert file_bytes(tmp_path / other) == file_bytes(tmp_path / "plain")
    assert sorted(p.name for p in (tmp_path / "stdin").iterdir()) == sorted(
        p.name for p in (tmp_path / "plain").iterdir())


def test_cleaning_strips_and_skips_blank_lines(tmp_path, text_lines, write_lines):
    lines = text_lines[:200]
    messy = b"\xef\xbb\xbf" + "".join(f"  {line}\t\r\n\n \n" for line in lines).encode()
    (tmp_path / "messy.txt").write_bytes(messy)
    clean = write_lines("clean.txt", lines)
    run([tmp_path / "messy.txt"], tmp_path / "a")
    run([clean], tmp_path / "b")
    assert file_bytes(tmp_path / "a") == file_bytes(tmp_path / "b")
    assert manifest(tmp_path / "a")["splits"] == manifest(tmp_path / "b")["splits"]


def test_invalid_utf8_strict_names_file_and_line_replace_succeeds(tmp_path, text_lines):
    data = "".join(line + "\n" for line in text_lines[:100]).encode()
    bad = tmp_path / "bad.txt"
    bad.write_bytes(data + b"\n\nab\xffcd\n" + data)
    with pytest.raises(InputError, match=r"bad\.txt:103: invalid UTF-8 \(byte 0xff at column 3\).*replace"):
        run([bad], tmp_path / "out")
    assert not (tmp_path / "out").exists()
    summary = run([bad], tmp_path / "out", PrepareConfig(**{**WORD.__dict__, "encoding_errors": "replace"}))
    assert sum(s["lines"] for s in summary["splits"].values()) == 201


def test_binary_missing_and_directory_inputs(tmp_path, text_lines, write_lines):
    (tmp_path / "bin.dat").write_bytes(b"hello\nwor\x00ld\n")
    with pytest.raises(InputError, match=r"bin\.dat:2: binary data \(NUL byte\)"):
        run([tmp_path / "bin.dat"], tmp_path / "out")
    with pytest.raises(InputError, match="nope.txt"):
        run([write_lines("ok.txt", text_lines), tmp_path / "nope.txt"], tmp_path / "out")
    with pytest.raises(InputError, match="sub"):
        (tmp_path / "sub").mkdir()
        run([tmp_path / "sub"], tmp_path / "out")
    (tmp_path / "cut.txt.gz").write_bytes(write_lines("cut.txt.gz", text_lines, gz=True).read_bytes()[:-100])
    with pytest.raises(InputError, match=r"cut\.txt\.gz:\d+: corrupt or truncated gzip data"):
        run([tmp_path / "cut.txt.gz"], tmp_path / "out")
    (tmp_path / "fake.gz").write_bytes(b"not gzip at all\n")
    with pytest.raises(InputError, match=r"fake\.gz: not a valid gzip file"):
        run([tmp_path / "fake.gz"], tmp_path / "out")
    with pytest.raises(ConfigError, match="stdin"):
        run(["-", "-"], tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bin.dat", "cut.txt.gz", "fake.gz", "ok.txt", "sub"]


def test_empty_corpus_and_no_train_lines(tmp_path, text_lines, write_lines):
    run([write_lines("corpus.txt", text_lines)], tmp_path / "data")
    (tmp_path / "empty.txt").write_text("\n   \n\t\n")
    with pytest.raises(InputError, match=r"empty\.txt: no text lines"):
        run([tmp_path / "empty.txt"], tmp_path / "out")
    (tmp_path / "long.txt").write_text("word " * 1000 + "\n")
    all_train = PrepareConfig(**{**WORD.__dict__, "valid_fraction": 0.0, "test_fraction": 0.0})
    with pytest.raises(InputError, match="no train line is short enough"):
        run([tmp_path / "long.txt"], tmp_path / "out", all_train)
    all_valid = PrepareConfig(**{**WORD.__dict__, "valid_fraction": 0.999, "test_fraction": 0.0})
    with pytest.raises(InputError, match="all 1 lines went to valid/test"):
        run([tmp_path / "long.txt"], tmp_path / "out", all_valid)
    with pytest.raises(InputError, match="all 1 lines went to valid/test"):
        run([tmp_path / "long.txt"], tmp_path / "out", PrepareConfig(**{
            **all_valid.__dict__, "tokenizer": str(tmp_path / "data" / "tokenizer.model")}))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus.txt", "data", "empty.txt", "long.txt"]


def test_existing_out_dir_needs_force(tmp_path, text_lines, write_lines):
    corpus = write_lines("corpus.txt", text_lines)
    run([corpus], tmp_path / "data")
    before = file_bytes(tmp_path / "data")
    with pytest.raises(OutputError, match="exists; use --force"):
        run([corpus], tmp_path / "data", PrepareConfig(**{**WORD.__dict__, "seed": 8}))
    assert file_bytes(tmp_path / "data") == before
    run([corpus], tmp_path / "data", PrepareConfig(**{**WORD.__dict__, "seed": 8}), force=True)
    assert file_bytes(tmp_path / "data") != before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus.txt", "data"]

    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("mine")
    with pytest.raises(OutputError, match="not an lmcli data dir"):
        run([corpus], tmp_path / "notes", force=True)
    assert (tmp_path / "notes" / "keep.txt").read_text() == "mine"


@pytest.mark.parametrize("exc", [OSError(errno.ENOSPC, "No space left on device"), KeyboardInterrupt()])
def test_write_failure_leaves_nothing_behind(tmp_path, text_lines, write_lines, monkeypatch, exc):
    corpus = write_lines("corpus.txt", text_lines)
    run([corpus], tmp_path / "data")
    before = file_bytes(tmp_path / "data")
    calls = []

    def failing_write(f, data):
        calls.append(len(data))
        if len(calls) == 3:
            raise exc
        f.write(data)

    monkeypatch.setattr(writer, "write_chunk", failing_write)
    expected = OutputError if isinstance(exc, OSError) else KeyboardInterrupt
    for out, force in ((tmp_path / "new", False), (tmp_path / "data", True)):
        calls.clear()
        with pytest.raises(expected, match="no space left on device" if expected is OutputError else None):
            run([corpus], out, force=force)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus.txt", "data"]
    assert file_bytes(tmp_path / "data") == before


def test_vocab_too_big_and_too_small(tmp_path, text_lines, write_lines):
    corpus = write_lines("corpus.txt", text_lines)
    # a word model holds at most one piece per distinct word of the train split, plus 4 specials
    rule = reference_splits(400, WORD.seed, 0.1, 0.1)
    train = [line for line, s in zip(text_lines, rule, strict=True) if s == "train"]
    limit = len({w for line in train for w in line.split()}) + 4
    with pytest.raises(ConfigError, match=rf"--vocab-size 8000 is larger than this corpus supports "
                                          rf"\(at most {limit} for --model-type word\)"):
        run([corpus], tmp_path / "out", PrepareConfig(**{**WORD.__dict__, "vocab_size": 8000}))
    with pytest.raises(ConfigError, match="--vocab-size 10 is too small"):
        run([corpus], tmp_path / "out", PrepareConfig(**{**UNIGRAM.__dict__, "vocab_size": 10}))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus.txt"]


@pytest.mark.parametrize("model_type", ["word", "bpe"])
def test_vocab_size_max_takes_every_piece_the_corpus_supports(tmp_path, text_lines, write_lines, model_type):
    """`--vocab-size max` gives exactly the limit sentencepiece names when asked for more (for word: the distinct
    words of the train split + 4 specials), and the same tokenizer as asking for that number."""
    corpus = write_lines("corpus.txt", text_lines)
    base = {**WORD.__dict__, "model_type": model_type}
    with pytest.raises(ConfigError, match=r"at most (\d+) for") as too_big:
        run([corpus], tmp_path / "big", PrepareConfig(**{**base, "vocab_size": 100000}))
    limit = int(re.search(r"at most (\d+) for", str(too_big.value)).group(1))
    summary = run([corpus], tmp_path / "max", PrepareConfig(**{**base, "vocab_size": "max"}))
    assert summary["vocab_size"] == limit
    if model_type == "word":
        rule = reference_splits(400, WORD.seed, 0.1, 0.1)
        train = [line for line, s in zip(text_lines, rule, strict=True) if s == "train"]
        assert limit == len({w for line in train for w in line.split()}) + 4
    run([corpus], tmp_path / "exact", PrepareConfig(**{**base, "vocab_size": limit}))

    def pieces(d):
        sp = spm.SentencePieceProcessor(model_file=str(d / "tokenizer.model"))
        return [sp.id_to_piece(i) for i in range(sp.get_piece_size())]

    assert pieces(tmp_path / "max") == pieces(tmp_path / "exact")
    assert open_data_dir(tmp_path / "max").vocab_size == limit
    # the manifest keeps what was asked and records what it resolved to
    asked = manifest(tmp_path / "max")["options"]
    assert asked["vocab_size"] == "max" and asked["vocab_size_resolved"] == limit
    assert manifest(tmp_path / "exact")["options"] == {**asked, "vocab_size": limit}


def test_reused_tokenizer_gives_the_same_ids(tmp_path, text_lines, write_lines):
    corpus = write_lines("corpus.txt", text_lines)
    run([corpus], tmp_path / "a")
    reuse = PrepareConfig(**{**WORD.__dict__, "tokenizer": str(tmp_path / "a" / "tokenizer.model"),
                             "vocab_size": 8000, "model_type": "bpe"})  # ignored when reusing
    summary = run([corpus], tmp_path / "b", reuse)
    assert file_bytes(tmp_path / "a") == file_bytes(tmp_path / "b")
    m = manifest(tmp_path / "b")
    assert m["tokenizer"]["trained"] is False and m["tokenizer"]["model_type"] == "word"
    reused = spm.SentencePieceProcessor(model_file=str(tmp_path / "a" / "tokenizer.model")).get_piece_size()
    assert m["options"]["vocab_size"] == 8000 and m["options"]["vocab_size_resolved"] == reused != 8000
    assert summary["tokenizer_sha256"] == manifest(tmp_path / "a")["tokenizer"]["sha256"]


def test_reused_tokenizer_with_other_special_ids_is_rejected(tmp_path, text_lines, write_lines):
    corpus = write_lines("corpus.txt", text_lines)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(text_lines), model_writer=model, vocab_size=30,
                                   model_type="word", minloglevel=2)  # defaults: unk 0, bos 1, eos 2, no pad
    (tmp_path / "other.model").write_bytes(model.getvalue())
    (tmp_path / "junk.model").write_bytes(b"not a model")
    for name, message in (("other.model", r"pad_id=-1 \(need 0\), unk_id=0 \(need 1\)"),
                          ("junk.model", "not a sentencepiece model"), ("missing.model", "cannot read")):
        cfg = PrepareConfig(**{**WORD.__dict__, "tokenizer": str(tmp_path / name)})
        with pytest.raises(ConfigError, match=message):
            run([corpus], tmp_path / "out", cfg)
    assert not (tmp_path / "out").exists()


class RecordingProgress(Progress):
    def __init__(self) -> None:
        self.tasks: dict[str, dict] = {}

    def task(self, description, total=None, completed=0) -> Task:
        record = self.tasks.setdefault(description, {"advance": 0, "closed": False})

        class Recorder(Task):
            def update(self, advance=1, **fields):
                record["advance"] += advance
                record.update(fields)

            def close(self):
                record["closed"] = True

        return Recorder()


def test_progress_and_silence(tmp_path, text_lines, write_lines, capfd):
    corpus = write_lines("corpus.txt", text_lines)
    progress = RecordingProgress()
    summary = prepare([str(corpus)], tmp_path / "data", UNIGRAM, progress)
    out, err = capfd.readouterr()
    assert (out, err) == ("", "")  # sentencepiece's logging is silenced
    assert set(progress.tasks) == {"tokenizer", "encode train", "encode valid", "encode test"}
    for s in ("train", "valid", "test"):
        task = progress.tasks[f"encode {s}"]
        assert task["closed"] and task["advance"] == task["lines"] == summary["splits"][s]["lines"]
        assert task["tokens"] == summary["splits"][s]["tokens"]
    assert progress.tasks["tokenizer"]["lines"] == summary["splits"]["train"]["lines"]
