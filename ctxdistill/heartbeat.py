"""A running job's heartbeat: a thread of the worker that stamps the job's row every second (its age
says how much CPU the worker gets, see jobs.starved), and that keeps the job's line moving while the
computing thread sits in one long call that reports nothing of its own: importing the libraries
(the count of Python modules loaded so far) and loading a model (transformers' progress bars:
"Loading weights", a GGUF file's conversion; counted through its tqdm hook by ``weights_counted``).
On a busy machine those calls took 20–35 s at a worker's share of the CPU, and the line said the
same thing all that time.

The thread starts before the worker lowers its priority, so it keeps a normal share of the CPU.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager

HEARTBEAT_S = 1.0
# the job's own line is left alone this long after it last said something
QUIET_S = 2.0

# the bar of the model load in progress (what it counts, done, of how many); "ever": items of every bar
_weights = {"desc": "", "read": 0, "total": 0, "ever": 0}


def _moved() -> tuple[int, int]:
    return len(sys.modules), _weights["ever"]


class _Counting:
    """A progress bar (tqdm, or transformers' empty stand-in) whose iteration counts into ``_weights``."""

    def __init__(self, bar, items, desc: str):
        self.bar = bar
        _weights.update(desc=desc.rstrip(". ").lower(), read=0, total=len(items))

    def __iter__(self):
        for i, item in enumerate(self.bar, 1):
            _weights["read"] = i
            _weights["ever"] += 1
            yield item

    def __getattr__(self, name):
        return getattr(self.bar, name)


@contextmanager
def weights_counted():
    """While a model loads, count the items of transformers' progress bars ("Loading weights", a GGUF
    file's "Converting and de-quantizing GGUF tensors"...)."""
    from transformers.utils import logging

    def hook(factory: Callable, args: tuple, kwargs: dict):
        bar = factory(*args, **kwargs)
        sized = args and hasattr(args[0], "__len__") and kwargs.get("desc")
        return _Counting(bar, args[0], kwargs["desc"]) if sized else bar

    previous = logging.set_tqdm_hook(hook)
    try:
        yield
    finally:
        logging.set_tqdm_hook(previous)
        _weights.update(desc="", read=0, total=0)


class Heartbeat(threading.Thread):
    """Stamps ``heartbeat_at`` every second; when the job's line has not changed for ``QUIET_S`` and
    modules or weights were loaded since, it adds what moved to the line (``said`` is told each line
    the job reports)."""

    def __init__(self, store, job_id: int):
        super().__init__(name=f"heartbeat-{job_id}", daemon=True)
        self.store, self.job_id = store, job_id
        self._done = threading.Event()
        self._lock = threading.Lock()
        self._line: str | None = None
        self._at = 0.0
        self._seen = _moved()

    def said(self, line: str) -> None:
        with self._lock:
            self._line, self._at, self._seen = line, time.monotonic(), _moved()

    def loading_line(self) -> str | None:
        """The job's line with what moved since it was said, once it has been quiet for QUIET_S (call
        with ``_lock`` held)."""
        now = _moved()
        if self._line is None or time.monotonic() - self._at < QUIET_S or now == self._seen:
            return None
        self._seen = now
        bar = f" · {_weights['desc']} {_weights['read']}/{_weights['total']}" if _weights["total"] else ""
        return f"{self._line} · {now[0]} Python modules loaded{bar}"

    def run(self) -> None:
        while not self._done.wait(HEARTBEAT_S):
            # the lock held through the write: a line the job says meanwhile waits, then is written after
            with self._lock:
                line = self.loading_line()
                try:
                    self.store.update_job(
                        self.job_id,
                        if_state=("queued", "running"),
                        heartbeat_at=time.time(),
                        **({"message": line} if line else {}),
                    )
                except Exception:  # a busy or closed database: the next beat tries again
                    pass

    def stop(self) -> None:
        self._done.set()
        self.join(timeout=5)
