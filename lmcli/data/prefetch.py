"""Batches built ahead of the training loop on a background thread, so the host does not stall the device.

Building a batch is numpy work (gathers from memory-mapped shards); TensorFlow releases the GIL while a step
runs, so the next batches are ready when the step returns.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any


class Prefetch:
    """Iterates (k, batches[k]) for k in [first, len(batches)), building up to `depth` batches ahead."""

    def __init__(self, batches: Any, first: int, depth: int = 3) -> None:
        self.batches, self.next, self.depth = batches, first, depth
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lmcli-batches")
        self.ahead: deque[tuple[int, Future]] = deque()

    def _fill(self) -> None:
        while len(self.ahead) < self.depth and self.next < len(self.batches):
            self.ahead.append((self.next, self.pool.submit(self.batches.__getitem__, self.next)))
            self.next += 1

    def __iter__(self) -> Iterator[tuple[int, Any]]:
        self._fill()
        while self.ahead:
            k, future = self.ahead.popleft()
            self._fill()
            yield k, future.result()

    def close(self) -> None:
        for _, future in self.ahead:
            future.cancel()
        self.pool.shutdown(wait=False, cancel_futures=True)

    def __enter__(self) -> "Prefetch":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
