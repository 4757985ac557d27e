"""Bad inputs through the CLI, one table: each gives its documented exit code, exactly one stderr line
`lmcli: error: ...`, no traceback, and leaves the disk as it was (no output left behind, nothing rewritten).

Placeholders in a row: {tmp} (this test's tmp_path, holding the files of `_standard_files`), {data} and
{data_b} (two prepared data dirs with different tokenizers), {run} (a run trained 6 steps on {data}, with
checkpoints 3 and 6), {corpus} (the text {data} was prepared from). Rows that change a run dir work on a
copy in {tmp}/run.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import shlex
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import pytest
import tensorflow as tf
from typer.testing import CliRunner

from lmcli.cli.main import app
from lmcli.config import PrepareConfig
from lmcli.data import writer
from lmcli.data.prepare import prepare
from lmcli.runtime.progress import Progress
from lmcli.runtime.runlock import LOCK_NAME
from lmcli.train.checkpoints import load_model
from lmcli.train.run import train

RUNNER = CliRunner()
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


@dataclass(frozen=True)
class World:
    """What the module prepares once; tests must leave all of it unchanged."""

    root: Path
    corpus: Path
    data: Path
    data_b: Path
    run: Path


def _lines(words: list[str], n: int, seed: int) -> str:
    rng = random.Random(seed)
    return "".join(" ".join(rng.choice(words) for _ in range(rng.randint(3, 8))) + "\n" for _ in range(n))


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    root = tmp_path_factory.mktemp("bad_inputs")
    corpus, corpus_b = root / "a.txt", root / "b.txt"
    corpus.write_text(_lines("the a cat dog sees eats big small red fish bird tree".split(), 200, seed=1))
    corpus_b.write_text(_lines("one two three four five six seven eight nine ten".split(), 200, seed=2))
    prepare([str(corpus)], root / "data", PrepareConfig(vocab_size=16, model_type="word", seed=3), Progress())
    prepare([str(corpus_b)], root / "data_b", PrepareConfig(vocab_size=14, model_type="word", seed=3), Progress())
    train(root / "data", root / "run", {"model": {"embedding_dim": 8, "hidden": 16},
                                        "data": {"batch_size": 4, "seq_len": 6},
                                        "train": {"max_steps": 6, "checkpoint_every": 3, "log_every": 3}})
    return World(root, corpus, root / "data", root / "data_b", root / "run")


@dataclass
class Ctx:
    tmp: Path
    world: World
    monkeypatch: pytest.MonkeyPatch


Setup = Callable[[Ctx], None]


@dataclass(frozen=True)
class Case:
    """One bad input: the command line, its exit code and a substring of its one error line.

    `frozen` limits the unchanged-on-disk check under {tmp} to these relative paths (for a train run that
    gets going before it fails); `after` runs extra checks once the command has failed.
    """

    cmd: str
    code: int
    message: str
    setup: Optional[Setup] = None
    frozen: tuple[str, ...] = ()
    after: Optional[Setup] = None


def _standard_files(tmp: Path) -> None:
    files = {
        "empty.txt": b"",
        "blank.txt": b"  \n\t\n\n",
        "binary.txt": b"the cat\0sees\n",
        "latin1.txt": "the caf\u00e9 sees a dog\n".encode("latin-1"),
        "bad.gz": b"plain text, not gzip\n",
        "not-toml.toml": b"hidden = \n",
        "unknown-key.toml": b"[train]\nhiden = 8\n",
        "not-a-table.toml": b"train = 3\n",
        "wrong-type.toml": b'[train]\nhidden = "wide"\n',
        "nan-lr.toml": b"[train]\nlr = nan\n",
        "taken/keep.txt": b"an existing output dir\n",
    }
    for name, data in files.items():
        (tmp / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp / name).write_bytes(data)
    (tmp / "adir").mkdir()


def copy_run(ctx: Ctx) -> None:
    shutil.copytree(ctx.world.run, ctx.tmp / "run")


def _data_files(ctx: Ctx) -> list[Path]:
    found = sorted((ctx.tmp / "run").glob("*/ckpt-*.data-*"))
    assert len(found) == 3  # checkpoints/ckpt-3, checkpoints/ckpt-6, best/ckpt-6
    return found


def truncated_run(ctx: Ctx) -> None:
    copy_run(ctx)
    for f in _data_files(ctx):
        os.truncate(f, f.stat().st_size // 2)


def corrupted_run(ctx: Ctx) -> None:
    """Overwrite the middle half of every checkpoint's data (model weights included); sizes unchanged."""
    copy_run(ctx)
    for f in _data_files(ctx):
        data = bytearray(f.read_bytes())
        n = len(data)
        data[n // 4:3 * n // 4] = bytes(i * 7 % 256 for i in range(3 * n // 4 - n // 4))
        f.write_bytes(bytes(data))


def replaced_data_dir(ctx: Ctx) -> None:
    """A run whose data dir ({tmp}/data) was later replaced by one with another tokenizer."""
    copy_run(ctx)
    shutil.copytree(ctx.world.data_b, ctx.tmp / "data")
    config = ctx.tmp / "run" / "config.json"
    saved = json.loads(config.read_text())
    config.write_text(json.dumps({**saved, "data_dir": str(ctx.tmp / "data")}))


def unreadable_file(ctx: Ctx) -> None:
    path = ctx.tmp / "locked.txt"
    path.write_text("the cat sees a dog\n")
    path.chmod(0)


def full_disk_at_shards(ctx: Ctx) -> None:
    """Every shard write fails with ENOSPC (the tokenizer file still gets written first)."""
    real = writer.write_chunk

    def write_chunk(f, data: bytes) -> None:
        if str(getattr(f, "name", "")).endswith(".ids.part"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(f, data)

    ctx.monkeypatch.setattr(writer, "write_chunk", write_chunk)


def full_disk_at_checkpoint(ctx: Ctx) -> None:
    """A copy of the run resumes at step 6; saving checkpoint 9 fails as TF fails on a full disk: a partial
    `ckpt-9_temp/` dir, then ResourceExhaustedError '...; No space left on device' (seen on a full tmpfs)."""
    copy_run(ctx)

    def save(self, checkpoint_number=None, **kwargs):
        temp = Path(self.directory) / f"ckpt-{checkpoint_number}_temp"
        temp.mkdir()
        part = temp / "part-00000-of-00001.data-00000-of-00001.tempstate1"
        part.write_bytes(b"\0" * 100)
        raise tf.errors.ResourceExhaustedError(
            None, None, "{{function_node __wrapped__SaveV2_dtypes_28_device_/job:localhost/replica:0/task:0/"
            f"device:CPU:0}}}} {part}; No space left on device [Op:SaveV2]")

    ctx.monkeypatch.setattr(tf.train.CheckpointManager, "save", save)


def previous_checkpoints_load(ctx: Ctx) -> None:
    run = ctx.tmp / "run"
    assert not list(run.rglob("*_temp*")), "the failed save left its temp dir"
    for which in ("latest", "best", "3"):
        _, _, step = load_model(run, which)
        assert step == (3 if which == "3" else 6)


def train_new(options: str) -> str:
    return f"train {{data}} --run-dir {{tmp}}/new-run {options}"


def gen(options: str) -> str:
    return f"generate {{run}} {options}"


def case(cmd: str, code: int, message: str, id: str, marks: Any = (), **kw: Any):
    return pytest.param(Case(cmd, code, message, **kw), id=id, marks=marks)


CASES = [
    # inputs of prepare
    case("prepare {tmp}/missing.txt --out {tmp}/out", 3, "cannot read {tmp}/missing.txt: No such file or directory",
         "missing-input"),
    case("prepare {tmp}/locked.txt --out {tmp}/out", 3, "cannot read {tmp}/locked.txt: Permission denied",
         "unreadable-input", setup=unreadable_file,
         marks=pytest.mark.skipif(IS_ROOT, reason="root reads a chmod 000 file; directory-as-input covers "
                                                  "an input that cannot be read")),
    case("prepare {tmp}/adir --out {tmp}/out", 3, "cannot read {tmp}/adir: Is a directory", "directory-as-input"),
    case("prepare {tmp}/empty.txt --out {tmp}/out", 3, "{tmp}/empty.txt: no text lines (empty or whitespace-only",
         "empty-corpus"),
    case("prepare {tmp}/blank.txt --out {tmp}/out", 3, "no text lines (empty or whitespace-only input)",
         "whitespace-only-corpus"),
    case("prepare {tmp}/binary.txt --out {tmp}/out", 3, "{tmp}/binary.txt:1: binary data (NUL byte)",
         "binary-input"),
    case("prepare {tmp}/latin1.txt --out {tmp}/out", 3, "{tmp}/latin1.txt:1: invalid UTF-8 (byte 0xe9 at column 8)",
         "non-utf8-input"),
    case("prepare {tmp}/bad.gz --out {tmp}/out", 3, "{tmp}/bad.gz: not a valid gzip file", "corrupt-gzip"),
    case("prepare {corpus} --out {tmp}/out --valid {tmp}/missing.txt", 3, "cannot read {tmp}/missing.txt",
         "missing-valid-file"),
    case("prepare {corpus} --out {tmp}/out --vocab-size 500 --model-type word", 4,
         "--vocab-size 500 is larger than this corpus supports (at most 16 for --model-type word)",
         "vocab-size-above-corpus"),
    case("prepare {corpus} --out {tmp}/out --vocab-size 0", 4, "--vocab-size must be positive, got 0",
         "vocab-size-0"),
    case("prepare {corpus} --out {tmp}/out --vocab-size 4", 4, "larger than the 4 special pieces",
         "vocab-size-only-specials"),
    case("prepare {corpus} --out {tmp}/out --model-type nosuch", 4, "unknown model type 'nosuch'",
         "unknown-model-type"),
    case("prepare {corpus} --out {tmp}/out --encoding-errors nosuch", 4, "unknown encoding-errors mode 'nosuch'",
         "unknown-encoding-errors"),
    case("prepare {corpus} --out {tmp}/out --valid-fraction 0.6 --test-fraction 0.5", 4,
         "--valid-fraction + --test-fraction must be below 1", "split-fractions-over-1"),
    case("prepare {corpus} --out {tmp}/taken", 6, "{tmp}/taken exists; use --force to replace it",
         "data-dir-exists"),
    case("prepare {corpus} --out {corpus}", 6, "{corpus} exists and is not a directory", "data-dir-is-a-file"),
    case("prepare {corpus} --out {tmp}/out --vocab-size 16 --model-type word", 6,
         "train.00000.ids: no space left on device", "disk-full-writing-shards", setup=full_disk_at_shards),
    # train: option values
    *[case(train_new(f"{flag} nosuch"), 4, f"unknown {what} 'nosuch'", f"unknown-{what.replace(' ', '-')}")
      for flag, what in (("--loss", "loss"), ("--sampler", "sampler"), ("--padding", "padding"),
                         ("--optimizer", "optimizer"), ("--pad-side", "pad side"),
                         ("--temperature-decay", "temperature decay"), ("--candidate-sets", "--candidate-sets"),
                         ("--tapas-correction", "--tapas-correction"))],
    *[case(train_new(f"{flag} {value}"), 4, f"{flag} must be {rule}, got {shown}", f"train{flag}={value}")
      for flag, value, rule, shown in (
          ("--hidden", "0", "positive", "0"), ("--embedding-dim", "-1", "positive", "-1"),
          ("--layers", "0", "positive", "0"), ("--batch-size", "0", "positive", "0"),
          ("--seq-len", "0", "positive", "0"), ("--lr", "0", "positive", "0.0"), ("--lr", "-1", "positive", "-1.0"),
          ("--lr", "nan", "positive", "nan"), ("--lr", "inf", "positive", "inf"), ("--epochs", "0", "positive", "0"),
          ("--keep", "0", "positive", "0"), ("--checkpoint-every", "0", "positive", "0"),
          ("--log-every", "0", "positive", "0"), ("--clip-norm", "nan", ">= 0", "nan"),
          ("--max-steps", "-1", ">= 0", "-1"), ("--dropout", "1.5", "in [0, 1)", "1.5"),
          ("--seed", "-1", "in [0, 2**32)", "-1"), ("--seed", "4294967296", "in [0, 2**32)", "4294967296"))],
    # train: loss terms, regularisers and schedules
    *[case(train_new(options), 4, message, f"terms{options.replace(' ', '')}") for options, message in (
        ("--aux-loss embedding --aux-weight -1", "--aux-weight must be >= 0, got -1.0"),
        ("--aux-loss embedding --aux-power 0", "--aux-power must be positive, got 0.0"),
        ("--aux-loss embedding --aux-rounds 0", "--aux-rounds must be positive, got 0"),
        ("--aux-loss nosuch", "unknown --aux-loss 'nosuch' (choose from embedding, ar, tar)"),
        ("--aux-loss ar --aux-loss ar", "--aux-loss names a term twice (ar, ar)"),
        ("--aux-loss kl", "the kl term comes with --variational-embedding; do not name it in --aux-loss"),
        ("--aux-loss tar --tar-beta -2", "--tar-beta must be >= 0, got -2.0"),
        ("--embedding-dropout 1", "--embedding-dropout must be in [0, 1), got 1.0"),
        ("--embedding-dropout -0.1", "--embedding-dropout must be in [0, 1), got -0.1"),
        ("--variational-embedding --kl-weight -1", "--kl-weight must be >= 0, got -1.0"),
        ("--lr-schedule nosuch", "unknown --lr-schedule 'nosuch' (choose from constant, step, exponential"),
        ("--lr-schedule step --lr-decay 0.5", "--lr-decay must be >= 1 (the rate is divided by it), got 0.5"),
        ("--lr 0.1 --min-lr 1", "--min-lr (1.0) must not exceed --lr (0.1)"),
        ("--warmup-steps -1", "--warmup-steps must be >= 0, got -1"))],
    case(train_new("--loss sampled --num-sampled 0"), 4, "--num-sampled must be positive, got 0",
         "train--num-sampled=0"),
    case(train_new("--loss sampled --num-sampled 16"), 4,
         "--num-sampled (16) must be less than the vocabulary size (16)", "sampled-num-sampled-at-vocab"),
    case(train_new("--loss tapas --num-sampled 8 --num-resampled 8"), 4,
         "--num-resampled (8) must be less than --num-sampled (8)", "tapas-num-resampled-at-num-sampled"),
    case(train_new("--loss tapas --num-sampled 17 --num-resampled 4"), 4,
         "--num-sampled (17) must not exceed the vocabulary size (16)", "tapas-num-sampled-above-vocab"),
    case(train_new("--loss tapas --num-sampled 8 --num-resampled 4 --candidate-sets row"), 4,
         "--candidate-sets row is for --loss sampled (TAPAS scores one set over the batch)", "tapas-row-sets"),
    case(train_new("--tie-embeddings --embedding-dim 8 --hidden 16"), 4,
         "--tie-embeddings needs the output width (16, from --hidden) to equal --embedding-dim (8)",
         "tie-embeddings-mismatch"),
    case(train_new("--hidden wide"), 2, "Invalid value for '--hidden'", "train-non-integer"),
    case(train_new("--nosuch 1"), 2, "No such option: --nosuch", "train-unknown-option"),
    case("train {data}", 2, "Missing option '--run-dir'", "train-missing-run-dir"),
    # train: --config
    case(train_new("--config {tmp}/missing.toml"), 4, "--config {tmp}/missing.toml: no such file",
         "config-missing"),
    case(train_new("--config {tmp}/not-toml.toml"), 4, "--config {tmp}/not-toml.toml: Invalid value (at line 1",
         "config-invalid-toml"),
    case(train_new("--config {tmp}/unknown-key.toml"), 4, "[train] has no option 'hiden'", "config-unknown-key"),
    case(train_new("--config {tmp}/not-a-table.toml"), 4, "'train' must be a table ([train])",
         "config-command-not-a-table"),
    case(train_new("--config {tmp}/wrong-type.toml"), 2, "Invalid value for '--hidden'", "config-wrong-type"),
    case(train_new("--config {tmp}/nan-lr.toml"), 4, "--lr must be positive, got nan", "config-nan-lr"),
    # train: data dir and run dir
    case("train {tmp}/adir --run-dir {tmp}/new-run", 5, "{tmp}/adir has no manifest.json: not an lmcli data dir",
         "data-dir-without-manifest"),
    case("train {tmp}/missing --run-dir {tmp}/new-run", 5, "data dir {tmp}/missing does not exist",
         "data-dir-missing"),
    case("train {run} --run-dir {tmp}/new-run", 5, "{run} has no manifest.json", "run-dir-given-as-data-dir"),
    case("train {data_b} --run-dir {tmp}/run", 5,
         "{data_b} has a different tokenizer than the one {tmp}/run was trained with", "train-tokenizer-mismatch",
         setup=copy_run),
    case("train {data} --run-dir {tmp}/run --hidden 32", 4, "was trained with other settings (model.hidden: 16 != 32)",
         "train-resume-changed-settings", setup=copy_run),
    case("train {data} --run-dir {corpus}", 5, "--run-dir {corpus} exists and is not a directory",
         "run-dir-is-a-file"),
    case("train {data} --run-dir {data}", 5, "--run-dir {data} is not an lmcli run dir (no config.json)",
         "run-dir-is-a-data-dir"),
    case("train {data} --run-dir {tmp}/run --max-steps 9", 5,
         "no readable checkpoint in {tmp}/run/checkpoints (ckpt-6: Read less bytes than requested)",
         "train-truncated-checkpoints", setup=truncated_run),
    case("train {data} --run-dir {tmp}/run --max-steps 9", 5, "Checksum does not match",
         "train-corrupted-checkpoints", setup=corrupted_run),
    case("train {data} --run-dir {tmp}/run --max-steps 9", 6,
         "cannot write checkpoint 9 in {tmp}/run/checkpoints: no space left on device",
         "disk-full-writing-checkpoint", setup=full_disk_at_checkpoint, frozen=("run/checkpoints", "run/best"),
         after=previous_checkpoints_load),
    # eval
    case("eval {run} --token-logprobs", 4, "--token-logprobs needs --per-line FILE", "token-logprobs-no-per-line"),
    case("eval {run} --checkpoint 999999", 5, "no 999999 checkpoint in {run}", "eval-no-such-step"),
    case("eval {run} --checkpoint newest", 5, "--checkpoint must be best, latest or a step number",
         "eval-bad-checkpoint-name"),
    case("eval {run} --split nosuch", 4, "unknown split 'nosuch' (choose from train, valid, test)",
         "eval-unknown-split"),
    case("eval {run} --batch-size 0", 4, "--batch-size must be positive, got 0", "eval-batch-size-0"),
    case("eval {run} --text {corpus} --encoding-errors nosuch", 4, "unknown encoding-errors mode 'nosuch'",
         "eval-unknown-encoding-errors"),
    case("eval {run} --text {tmp}/missing.txt", 3, "cannot read {tmp}/missing.txt", "eval-text-missing"),
    case("eval {run} --text {tmp}/blank.txt", 3, "{tmp}/blank.txt: no text lines", "eval-text-empty"),
    case("eval {run} --text {tmp}/binary.txt", 3, "binary data (NUL byte)", "eval-text-binary"),
    case("eval {run} --text {tmp}/latin1.txt", 3, "invalid UTF-8", "eval-text-non-utf8"),
    case("eval {run} --per-line {tmp}/adir", 6, "cannot write {tmp}/adir: Is a directory",
         "eval-per-line-is-a-directory"),
    case("eval {tmp}/adir", 5, "{tmp}/adir/config.json not found: not an lmcli run dir", "eval-not-a-run-dir"),
    case("eval {data}", 5, "not an lmcli run dir", "eval-data-dir-as-run-dir"),
    case("eval {tmp}/missing", 5, "{tmp}/missing is not a directory", "eval-run-dir-missing"),
    case("eval {tmp}/run", 5, "the data dir {tmp}/data has a different tokenizer than {tmp}/run",
         "eval-data-dir-replaced", setup=replaced_data_dir),
    case("eval {tmp}/run", 5, "cannot restore checkpoint {tmp}/run/best/ckpt-6: Read less bytes than requested",
         "eval-truncated-checkpoint", setup=truncated_run),
    case("eval {tmp}/run --checkpoint 3", 5, "cannot restore checkpoint {tmp}/run/checkpoints/ckpt-3:",
         "eval-corrupted-checkpoint", setup=corrupted_run),
    # generate
    case(gen('--prompt ""'), 4, "the prompt is empty", "empty-prompt"),
    case(gen('--prompt "   "'), 4, "the prompt is empty", "blank-prompt"),
    case(gen("--prompt the --prompts {corpus}"), 4, "give exactly one of --prompt TEXT or --prompts FILE",
         "prompt-and-prompts"),
    case(gen(""), 4, "give exactly one of --prompt TEXT or --prompts FILE", "no-prompt"),
    case(gen("--prompts {tmp}/missing.txt"), 3, "cannot read {tmp}/missing.txt", "prompts-file-missing"),
    case(gen("--prompts {tmp}/blank.txt"), 4, "has no prompts", "prompts-file-empty"),
    *[case(gen(f"--prompt the {flag} {value}"), 4, f"{flag} must be {rule}, got {shown}", f"generate{flag}={value}")
      for flag, value, rule, shown in (
          ("--max-tokens", "0", "positive", "0"), ("--top-p", "0", "in (0, 1]", "0.0"),
          ("--top-p", "nan", "in (0, 1]", "nan"), ("--temperature", "-1", ">= 0", "-1.0"),
          ("--temperature", "nan", ">= 0", "nan"), ("--num-samples", "0", "positive", "0"),
          ("--top-k", "-1", ">= 0", "-1"), ("--seed", "-1", ">= 0", "-1"))],
    case(gen('--prompt the --stop ""'), 4, "--stop strings must not be empty", "empty-stop-string"),
    case("generate {tmp}/run --prompt the", 5, "cannot restore checkpoint {tmp}/run/best/ckpt-6",
         "generate-truncated-checkpoint", setup=truncated_run),
    # export
    case("export {run} --out {tmp}/taken --no-verify", 6, "{tmp}/taken exists; use --force to replace it",
         "export-dir-exists"),
    case("export {tmp}/run --out {tmp}/export --no-verify", 5, "cannot restore checkpoint {tmp}/run/best/ckpt-6",
         "export-corrupted-checkpoint", setup=corrupted_run),
    case("export {tmp}/adir --out {tmp}/export", 5, "not an lmcli run dir", "export-not-a-run-dir"),
]


def _sha256(path: Path) -> Optional[str]:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except PermissionError:  # a chmod 000 row, when not root
        return None


def snapshot(*roots: Path) -> dict[str, tuple]:
    """(size, mtime_ns, sha256) of every file and ('dir',) of every directory under `roots`.

    `train` takes the run dir's lock before it reads any checkpoint, and the lock file records the holder's
    pid: an existing `.lock` may get new bytes, but a new one still shows as a new path.
    """
    found: dict[str, tuple] = {}
    for root in roots:
        for path in sorted(root.rglob("*")):
            st = path.lstat()
            if path.is_dir() and not path.is_symlink():
                found[str(path)] = ("dir",)
            elif path.name == LOCK_NAME:
                found[str(path)] = ("lock",)
            else:
                found[str(path)] = (st.st_size, st.st_mtime_ns, _sha256(path))
    return found


def _restricted(snap: dict[str, tuple], tmp: Path, frozen: tuple[str, ...]) -> dict[str, tuple]:
    if not frozen:
        return snap
    keep = [str(tmp / f) for f in frozen]
    outside_tmp = {k: v for k, v in snap.items() if not k.startswith(str(tmp) + os.sep)}
    return {k: v for k, v in snap.items() if any(k == p or k.startswith(p + os.sep) for p in keep)} | outside_tmp


def _diff(before: dict[str, tuple], after: dict[str, tuple]) -> list[str]:
    return ([f"new {p}" for p in sorted(set(after) - set(before))]
            + [f"gone {p}" for p in sorted(set(before) - set(after))]
            + [f"changed {p}" for p in sorted(set(before) & set(after)) if before[p] != after[p]])


@pytest.mark.parametrize("bad", CASES)
def test_bad_input_is_one_error_line_with_its_exit_code_and_changes_nothing(bad: Case, world, tmp_path,
                                                                           monkeypatch, capfd):
    ctx = Ctx(tmp_path, world, monkeypatch)
    _standard_files(tmp_path)
    if bad.setup is not None:
        bad.setup(ctx)
    names = {"tmp": str(tmp_path), "data": str(world.data), "data_b": str(world.data_b), "run": str(world.run),
             "corpus": str(world.corpus)}
    args = [arg.format(**names) for arg in shlex.split(bad.cmd)]
    before = snapshot(tmp_path, world.root)

    result = RUNNER.invoke(app, args)

    fd_out, fd_err = capfd.readouterr()  # what bypassed the runner (progress, TF logging) is still checked
    assert result.exit_code == bad.code, (args, result.output, result.exception)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("lmcli: error: "), lines
    assert bad.message.format(**names) in lines[0], lines[0]
    assert "Traceback" not in result.output + fd_out + fd_err
    after = snapshot(tmp_path, world.root)
    changes = _diff(_restricted(before, tmp_path, bad.frozen), _restricted(after, tmp_path, bad.frozen))
    assert not changes, changes
    if bad.after is not None:
        bad.after(ctx)
