"""Two worker processes on 127.0.0.1 with TF_CONFIG (CPU only, one replica each) train exactly as the mirrored
run on the same global batch; a killed worker ends the other with a clear error at once; SIGTERM to one worker
stops both at one shared checkpoint with 143; rerunning both resumes to the uninterrupted run's weights. Every
wait is bounded."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from lmcli.runtime.progress import Progress
from lmcli.serve.export_format import is_export_dir
from lmcli.train.checkpoints import load_model
from lmcli.train.run import train

STEPS = 100
OPTIONS = {"embedding-dim": 8, "hidden": 12, "batch-size": 6, "seq-len": 5, "lr": 0.02, "seed": 9,
           "dropout": 0.2, "loss": "sampled", "num-sampled": 6, "max-steps": STEPS, "checkpoint-every": 10,
           "epochs": 10}
WAIT = 120  # seconds any single wait may take


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(data_dir: Path, run: Path, *extra: str) -> list[subprocess.Popen]:
    ports = [free_port(), free_port()]
    procs = []
    for i in range(2):
        config = {"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]}, "task": {"type": "worker", "index": i}}
        env = {**os.environ, "TF_CONFIG": json.dumps(config), "TF_CPP_MIN_LOG_LEVEL": "3"}
        args = [a for k, v in OPTIONS.items() for a in (f"--{k}", str(v))]
        procs.append(subprocess.Popen([sys.executable, "-m", "lmcli", "train", str(data_dir), "--run-dir", str(run),
                                       *args, "--worker-timeout", "60", "--quiet", "--json", *extra], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    return procs


def finish(procs) -> list[tuple[int, str, str]]:
    out = []
    for p in procs:
        try:
            stdout, stderr = p.communicate(timeout=WAIT)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            pytest.fail("a worker did not finish in time")
        out.append((p.returncode, stdout, stderr))
    return out


def wait_for_checkpoint(run: Path, after: int = 0) -> int:
    deadline = time.monotonic() + WAIT
    index = run / "checkpoints" / "checkpoint"
    while time.monotonic() < deadline:
        if index.exists():
            step = int(index.read_text().split('"')[1].rsplit("-", 1)[1])
            if step > after:
                return step
        time.sleep(0.1)
    pytest.fail("no checkpoint came")


def worker_checkpoints() -> set:
    return set(Path(os.environ.get("TMPDIR", "/tmp")).glob("lmcli-worker-*/checkpoints/ckpt-*"))


def weights(run):
    model, _, step = load_model(run, "latest")
    return step, [v.numpy() for v in model.weights]


@pytest.fixture(scope="module")
def reference(tiny_data_dir, tmp_path_factory):
    """The same run under mirrored on two logical CPU devices, in this process."""
    run = tmp_path_factory.mktemp("mw") / "mirrored"
    opts = {"model": {"embedding_dim": 8, "hidden": 12, "dropout": 0.2},
            "data": {"batch_size": 6, "seq_len": 5}, "loss": {"name": "sampled", "num_sampled": 6},
            "train": {"lr": 0.02, "seed": 9, "max_steps": STEPS, "checkpoint_every": 10, "epochs": 10,
                      "distribute": "mirrored", "devices": "cpu:0,cpu:1"}}
    train(tiny_data_dir, run, opts, progress=Progress())
    return weights(run)


def assert_same(got, want):
    assert got[0] == want[0]
    for a, b in zip(got[1], want[1]):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)


PEER_GONE = "lmcli: error: another worker stopped"  # the first words of both ways a worker learns of it


def test_the_watch_on_the_other_workers_says_what_the_collective_error_says():
    """Whichever notices a dead worker first, TensorFlow's collective error or lmcli's watch on the other workers'
    servers, the surviving worker exits 10 with one line that starts the same (the killed-worker test below sees
    either)."""
    root = Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, "-c", "from lmcli.runtime.watchdog import _exit_with_error; "
                        "_exit_with_error('127.0.0.1:9')"], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": str(root)})
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 10 and len(lines) == 1 and lines[0].startswith(PEER_GONE), r.stderr
    assert "127.0.0.1:9" in lines[0] and "rerun every worker to resume" in lines[0]


def test_two_workers_train_as_the_mirrored_run_and_the_chief_alone_exports(tiny_data_dir, tmp_path, reference):
    export = tmp_path / "export"
    leftovers = worker_checkpoints()  # a worker SIGKILLed by an earlier run cannot remove its own
    results = finish(launch(tiny_data_dir, tmp_path / "run", "--export-on-finish", str(export)))
    for code, _, stderr in results:
        assert code == 0, stderr[-2000:]
    summaries = [json.loads(stdout) for _, stdout, _ in results]
    assert [(s["distribute"], s["replicas"], s["workers"]) for s in summaries] == [("multi-worker", 2, 2)] * 2
    assert summaries[0]["loss"] == "sampled" and summaries[0]["steps"] == STEPS
    assert_same(weights(tmp_path / "run"), reference)
    assert worker_checkpoints() <= leftovers  # the other worker's temporary checkpoints were removed
    # one export, by the chief (worker 0), verified against the run's model; the other worker wrote none
    assert [s["worker"] for s in summaries] == [0, 1] and summaries[1]["export"] is None
    assert summaries[0]["export"]["verified"] and is_export_dir(export)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export", "run"]  # no temporary export dir left


def test_a_killed_worker_ends_the_other_and_sigterm_stops_both_then_both_resume(tiny_data_dir, tmp_path,
                                                                                 reference):
    run = tmp_path / "run"
    procs = launch(tiny_data_dir, run)
    first = wait_for_checkpoint(run)
    killed_at = time.monotonic()
    procs[1].kill()
    (code, _, stderr), _ = finish(procs)
    assert code == 10 and time.monotonic() - killed_at < 30, stderr[-2000:]
    line = stderr.strip().splitlines()[-1]
    assert line.startswith(PEER_GONE) and "rerun every worker to resume" in line

    procs = launch(tiny_data_dir, run)  # both again: they resume, and one of them is asked to stop
    wait_for_checkpoint(run, after=first)
    procs[1].send_signal(signal.SIGTERM)
    results = finish(procs)
    assert [code for code, _, _ in results] == [143, 143], [r[2][-1000:] for r in results]
    steps = {int(stderr.split(" at step ")[1].split(";")[0]) for _, _, stderr in results}
    assert len(steps) == 1 and weights(run)[0] == steps.pop()  # one step, checkpointed by both

    results = finish(launch(tiny_data_dir, run))
    assert [code for code, _, _ in results] == [0, 0], [r[2][-1000:] for r in results]
    assert json.loads(results[0][1])["resumed_from_step"] > first
    assert_same(weights(run), reference)
