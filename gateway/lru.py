"""A small thread-safe LRU: what worker threads remember of content they saw before."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class LRU(Generic[K, V]):
    """At most ``size`` entries and, when ``max_bytes`` is given, at most that many bytes as told to
    ``put`` (an entry heavier than it is not kept)."""

    def __init__(self, size: int, max_bytes: int | None = None):
        self.size = size
        self.max_bytes = max_bytes
        self.bytes = 0
        self._data: OrderedDict[K, V] = OrderedDict()
        self._weights: dict[K, int] = {}
        self._lock = threading.Lock()

    @property
    def data(self) -> OrderedDict[K, V]:
        return self._data

    def get(self, key: K) -> tuple[bool, V | None]:
        with self._lock:
            if key in self._data:
                self._data.move_to_end(key)
                return True, self._data[key]
        return False, None

    def put(self, key: K, value: V, nbytes: int = 0) -> None:
        """Remember ``value``; ``nbytes``: what it (and its key) cost, counted against ``max_bytes``."""
        if self.max_bytes is not None and nbytes > self.max_bytes:
            return
        with self._lock:
            self.bytes += nbytes - self._weights.pop(key, 0)
            if nbytes:
                self._weights[key] = nbytes
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self.size or (self.max_bytes is not None and self.bytes > self.max_bytes):
                old, _ = self._data.popitem(last=False)
                self.bytes -= self._weights.pop(old, 0)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
            self._weights.clear()
            self.bytes = 0
