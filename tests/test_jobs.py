"""Batch-job behaviour: SIGKILL at any point resumes to the uninterrupted weights, SIGTERM/SIGINT checkpoint
and exit 143/130, one job per run dir, and the NaN guard."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from lmcli import losses
from lmcli.cli.main import app
from lmcli.config import PrepareConfig
from lmcli.data.prepare import prepare
from lmcli.runtime.progress import Progress
from lmcli.runtime.runlock import RunLock
from lmcli.train.checkpoints import load_model

HERE = Path(__file__).resolve().parent
TRAIN = ["--embedding-dim", "8", "--hidden", "16", "--batch-size", "4", "--seq-len", "6", "--lr", "0.01",
         "--dropout", "0.1", "--checkpoint-every", "4", "--max-steps", "26", "--epochs", "3", "--seed", "5",
         "--quiet"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    rng = random.Random(2)
    words = ["cat", "dog", "bird", "sees", "eats", "a", "the", "fish", "tree", "big"]
    lines = [" ".join(rng.choice(words) for _ in range(rng.randint(3, 8))) for _ in range(120)]
    root = tmp_path_factory.mktemp("jobs")
    (root / "c.txt").write_text("\n".join(lines) + "\n")
    prepare([str(root / "c.txt")], root / "data", PrepareConfig(vocab_size=14, model_type="word", seed=1),
            Progress())
    return root / "data"


def lmcli(*args, mode=None, at=0):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(HERE.parent)}
    cmd = ([sys.executable, str(HERE / "kill_driver.py"), mode, str(at), "--"] if mode
           else [sys.executable, "-m", "lmcli"])
    return subprocess.run(cmd + [str(a) for a in args], capture_output=True, text=True, env=env, timeout=300)


def final_weights(run):
    model, _, step = load_model(run, "latest")
    return step, [v.numpy() for v in model.weights]


@pytest.fixture(scope="module")
def reference(data_dir, tmp_path_factory):
    runs = {}
    for loss in ("full", "sampled"):
        run = tmp_path_factory.mktemp("ref") / loss
        extra = ["--num-sampled", "5"] if loss == "sampled" else []
        r = lmcli("train", data_dir, "--run-dir", run, "--loss", loss, *extra, *TRAIN)
        assert r.returncode == 0, r.stderr
        runs[loss] = final_weights(run)
    return runs


def assert_same(a, b):
    assert a[0] == b[0]
    for x, y in zip(a[1], b[1]):
        np.testing.assert_allclose(x, y, rtol=0, atol=1e-6)


KILLS = [("before-save", 4), ("before-save", 8), ("mid-save", 12), ("torn-indexed", 16), ("after-save", 20)]


@pytest.mark.parametrize("loss", ["full", "sampled"])
def test_sigkill_at_many_points_resumes_to_the_uninterrupted_weights(data_dir, reference, tmp_path, loss):
    run = tmp_path / "run"
    extra = ["--num-sampled", "5"] if loss == "sampled" else []
    kills = KILLS if loss == "full" else KILLS[1:3]
    for mode, at in kills:  # each kill interrupts the run where the previous resume left off
        r = lmcli("train", data_dir, "--run-dir", run, "--loss", loss, *extra, *TRAIN, mode=mode, at=at)
        assert r.returncode == -signal.SIGKILL, (mode, r.stderr[-500:])
    # and one kill from outside at a random moment
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.Popen([sys.executable, "-m", "lmcli", "train", str(data_dir), "--run-dir", str(run),
                             "--loss", loss, *extra, *TRAIN], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    time.sleep(random.Random(0).uniform(3.0, 5.0))
    proc.kill()
    proc.wait()
    r = lmcli("train", data_dir, "--run-dir", run, "--loss", loss, *extra, *TRAIN, "--json")
    assert r.returncode == 0, r.stderr
    assert_same(final_weights(run), reference[loss])


@pytest.mark.parametrize("mode,code", [("sigterm", 143), ("sigint", 130)])
def test_signal_checkpoints_then_exits_with_its_code_and_resumes(data_dir, reference, tmp_path, mode, code):
    run = tmp_path / "run"
    r = lmcli("train", data_dir, "--run-dir", run, *TRAIN, mode=mode, at=9)
    assert r.returncode == code, r.stderr
    assert "checkpoint written" in r.stderr.strip().splitlines()[-1]
    assert final_weights(run)[0] == 10  # the step in flight finished, then a checkpoint
    r = lmcli("train", data_dir, "--run-dir", run, *TRAIN)
    assert r.returncode == 0, r.stderr
    assert_same(final_weights(run), reference["full"])


def test_second_job_on_a_run_dir_is_refused_and_a_stale_lock_is_taken_over(data_dir, tmp_path):
    run = tmp_path / "run"
    runner = CliRunner()
    with RunLock(run):  # a live holder
        r = runner.invoke(app, ["train", str(data_dir), "--run-dir", str(run), *TRAIN])
        assert r.exit_code == 8
        assert r.stderr.strip().startswith("lmcli: error:") and "is in use by pid" in r.stderr
        assert not (run / "config.json").exists()
    (run / ".lock").write_text("pid 999999 on a-host-that-died\n")  # left by a killed process
    r = runner.invoke(app, ["train", str(data_dir), "--run-dir", str(run), *TRAIN[:-5], "--max-steps", "2"])
    assert r.exit_code == 0, r.output


def test_nan_loss_stops_with_its_code_and_keeps_the_last_good_checkpoint(data_dir, tmp_path, monkeypatch):
    run = tmp_path / "run"
    full = losses.STRATEGIES["full"]

    def poisoned(inputs, cfg, ctx):
        import dataclasses

        import tensorflow as tf

        out = full.fn(inputs, cfg, ctx)
        bad = tf.cond(inputs.clock.step >= 6, lambda: out.losses * np.nan, lambda: out.losses)
        return dataclasses.replace(out, losses=bad)

    monkeypatch.setitem(losses.STRATEGIES, "full", losses.Strategy(poisoned, draws_candidates=False))
    r = CliRunner().invoke(app, ["train", str(data_dir), "--run-dir", str(run), *TRAIN])
    assert r.exit_code == 7
    line = r.stderr.strip()
    assert "\n" not in line and "at step 7" in line and "--lr" in line and "--clip-norm" in line
    assert load_model(run, "latest")[2] == 4  # the last good checkpoint, untouched
    # resuming after the fix (here: the poison removed) continues from that checkpoint
    monkeypatch.setitem(losses.STRATEGIES, "full", full)
    r = CliRunner().invoke(app, ["train", str(data_dir), "--run-dir", str(run), *TRAIN, "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout)["resumed_from_step"] == 4


def test_intra_op_threads_reach_tensorflow_and_change_no_result(data_dir, tmp_path):
    """`--intra-op-threads 1` is set before TensorFlow's first op: train reports the runtime's own count (0 = its
    default; on two logical CPU devices, half the cores), and the weights are one-per-core's to float rounding. A
    negative count is refused, exit 4."""
    short = [a if a != "26" else "8" for a in TRAIN]  # --max-steps 8
    runs = {}
    for threads in (0, 1):
        run = tmp_path / f"t{threads}"
        r = lmcli("train", data_dir, "--run-dir", run, "--loss", "sampled", "--num-sampled", "5",
                  "--intra-op-threads", threads, "--json", *short)
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["intra_op_threads"] == threads
        runs[threads] = final_weights(run)
    assert runs[0][0] == runs[1][0] == 8
    for x, y in zip(runs[0][1], runs[1][1]):
        np.testing.assert_allclose(x, y, rtol=0, atol=1e-5)
    # two logical CPU devices: 0 divides the cores between them
    r = lmcli("train", data_dir, "--run-dir", tmp_path / "two", "--loss", "sampled", "--num-sampled", "5",
              "--distribute", "mirrored", "--devices", "cpu:0,cpu:1", "--json", *short)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["intra_op_threads"] == max(1, len(os.sched_getaffinity(0)) // 2)
    for command in (["eval", tmp_path / "t1"], ["generate", tmp_path / "t1", "--prompt", "the", "--max-tokens", 3]):
        # the command in a fresh process, then the count TensorFlow runs with
        script = ("import sys; from lmcli.cli.main import app; app(sys.argv[1:], standalone_mode=False); "
                  "import tensorflow as tf; print(tf.config.threading.get_intra_op_parallelism_threads())")
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(HERE.parent)}
        r = subprocess.run([sys.executable, "-c", script, *map(str, command), "--intra-op-threads", "1", "--quiet"],
                           capture_output=True, text=True, env=env, timeout=300)
        assert r.returncode == 0 and r.stdout.strip().splitlines()[-1] == "1", (command, r.stdout, r.stderr)
    bad = lmcli("train", data_dir, "--run-dir", tmp_path / "bad", "--intra-op-threads", -1, *short)
    assert bad.returncode == 4 and bad.stderr.strip().splitlines() == [
        "lmcli: error: --intra-op-threads must be >= 0, got -1"], bad.stderr
    assert not (tmp_path / "bad").exists()
