"""A multi-worker run's watch on its peers: when another worker's process is gone, this one stops at once with a
clear error (exit 10) instead of waiting in a collective.

TensorFlow notices a dead worker only when a collective times out (`--worker-timeout`) or its coordination
service misses heartbeats, and on this version the latter can end the survivor with a C++ abort rather than an
error. A dead worker's gRPC server (its TF_CONFIG address) stops accepting connections at once, so each worker
polls the others' addresses; a peer refused for `grace` seconds in a row is gone. Workers disarm the watch only
after a barrier that every worker reaches (the end of training, or a stop they all agreed on), so a peer that
finished normally is never taken for a dead one.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
from collections.abc import Callable

from lmcli.runtime.errors import PeerError


class PeerWatch:
    """Polls `peers` [(host, port)] every `interval` seconds from a daemon thread while armed."""

    def __init__(self, peers: list[tuple[str, int]], grace: float = 5.0, interval: float = 1.0,
                 on_loss: Callable[[str], None] | None = None) -> None:
        self.peers, self.grace, self.interval = peers, grace, interval
        self.on_loss = on_loss or _exit_with_error
        self.armed = threading.Event()
        self.thread = threading.Thread(target=self._watch, name="lmcli-peer-watch", daemon=True)

    def start(self) -> "PeerWatch":
        self.armed.set()
        self.thread.start()
        return self

    def stop(self) -> None:
        self.armed.clear()

    def _watch(self) -> None:
        refused_since: dict[tuple[str, int], float] = {}
        while self.armed.is_set():
            now = time.monotonic()
            for peer in self.peers:
                if _accepts(peer):
                    refused_since.pop(peer, None)
                elif now - refused_since.setdefault(peer, now) >= self.grace and self.armed.is_set():
                    self.on_loss(f"{peer[0]}:{peer[1]}")
                    return
            time.sleep(self.interval)


def _accepts(peer: tuple[str, int]) -> bool:
    try:
        with socket.create_connection(peer, timeout=2.0):
            return True
    except OSError:
        return False


def _exit_with_error(peer: str) -> None:
    """The main thread is blocked inside a collective: report and leave from here."""
    # The same first words as the collective's error (train/run.py), whichever of the two notices first.
    message = (f"another worker stopped: the worker at {peer} no longer answers; this worker stops too: rerun "
               "every worker to resume from the last checkpoint")
    sys.stderr.write(f"lmcli: error: {message}\n")
    sys.stderr.flush()
    os._exit(PeerError.exit_code)


def peers_of(tf_config: dict) -> list[tuple[str, int]]:
    """The (host, port) of every other task of a TF_CONFIG cluster."""
    task = tf_config.get("task", {})
    out = []
    for kind, addresses in tf_config.get("cluster", {}).items():
        for index, address in enumerate(addresses):
            if (kind, index) != (task.get("type"), int(task.get("index", 0))):
                host, _, port = address.rpartition(":")
                out.append((host, int(port)))
    return out
