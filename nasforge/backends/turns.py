"""Threads of one process that compile side by side take turns at everything but waiting for a child.

Why: TVM generates code in a worker process (:mod:`nasforge.backends.tvm_worker`), and while one compile
waits for its child, the parent's cores could export the next network. But ``torch.export`` and fx tracing
patch global state and are not thread-safe. So a thread does all of its parent-side work holding
:data:`PARENT` (:meth:`Turns.turn`) and lets go of it only while it waits for a child process
(:meth:`Turns.waiting`): the parent stays single-threaded where it matters, and children overlap with it.
The coverage matrix compiles its TVM column two groups at a time this way (146 s -> 77 s here).
"""

from __future__ import annotations

import contextlib
import threading
from typing import Iterator


class Turns:
    """One lock for the parent-side work, and which thread holds it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held = threading.local()

    @contextlib.contextmanager
    def turn(self) -> Iterator[None]:
        """Hold the parent for the block (apart from its :meth:`waiting` spans)."""
        with self._lock:
            self._held.value = True
            try:
                yield
            finally:
                self._held.value = False

    @contextlib.contextmanager
    def waiting(self) -> Iterator[None]:
        """Let another thread have its turn while this one waits for a child process; a thread that holds
        no turn (the usual single-threaded caller) just waits."""
        if not getattr(self._held, "value", False):
            yield
            return
        self._held.value = False
        self._lock.release()
        try:
            yield
        finally:
            self._lock.acquire()
            self._held.value = True


PARENT = Turns()
