"""A consumer thread fed in order through a bounded queue: how the writer hashes the
bytes it copies without a second pass and without holding the file in memory.

hashlib releases the GIL on large buffers, so on two or more cores the workers overlap
each other and the copy loop. The queue is bounded, so a slow worker back-pressures the copy
instead of buffering the file. Items must not change after ``put`` (the copier passes fresh
``bytes``).
"""

from __future__ import annotations

import queue
import threading
from typing import Any, Callable

QUEUE_ITEMS = 8  # items in flight per worker: at most QUEUE_ITEMS chunks held


class OrderedWorker:
    _END = object()

    def __init__(self, consume: Callable[[Any], None], *, name: str):
        self._consume = consume
        self._queue: queue.Queue = queue.Queue(QUEUE_ITEMS)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (item := self._queue.get()) is not self._END:
            if self._error is None:
                try:
                    self._consume(item)
                except BaseException as exc:  # noqa: BLE001 - re-raised by join()
                    self._error = exc

    def put(self, item) -> None:
        self._queue.put(item)

    def close(self) -> None:
        """Stop the thread (after it has consumed what it was given); never raises."""
        if self._thread.is_alive():
            self._queue.put(self._END)
            self._thread.join()

    def join(self) -> None:
        """Wait for every item to be consumed; raise what the consumer raised, if anything."""
        self.close()
        if self._error is not None:
            raise self._error


class Sha256Worker(OrderedWorker):
    def __init__(self):
        import hashlib

        self._hash = hashlib.sha256()
        super().__init__(self._hash.update, name="adapterctl-sha256")

    update = OrderedWorker.put

    def hexdigest(self) -> str:
        self.join()
        return self._hash.hexdigest()
