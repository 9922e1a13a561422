"""A hash thread fed in order through a bounded queue: how the writer hashes the bytes it
copies without a second pass and without holding the file in memory.

hashlib releases the GIL on large buffers, so on two or more cores the hash threads overlap
each other and the copy loop. The queue is bounded, so a slow worker back-pressures the copy
instead of buffering the file. Items must not change after ``update`` (the copier passes fresh
``bytes``).
"""

from __future__ import annotations

import queue
import threading

QUEUE_ITEMS = 8  # items in flight per worker: at most QUEUE_ITEMS chunks held


class Sha256Worker:
    """sha256 of the chunks given to ``update``, computed in order by a worker thread."""

    _END = object()

    def __init__(self):
        import hashlib

        self._hash = hashlib.sha256()
        self._queue: queue.Queue = queue.Queue(QUEUE_ITEMS)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="adapterctl-sha256", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (item := self._queue.get()) is not self._END:
            if self._error is None:
                try:
                    self._hash.update(item)
                except BaseException as exc:  # noqa: BLE001 - re-raised by hexdigest()
                    self._error = exc

    def update(self, data) -> None:
        self._queue.put(data)

    def close(self) -> None:
        """Stop the thread (after it has hashed what it was given); never raises."""
        if self._thread.is_alive():
            self._queue.put(self._END)
            self._thread.join()

    def hexdigest(self) -> str:
        self.close()
        if self._error is not None:
            raise self._error
        return self._hash.hexdigest()
