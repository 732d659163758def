"""A running job's heartbeat: a thread of the worker that stamps the job's row every second (its age
says how much CPU the worker gets, see jobs.starved), and that keeps the job's line moving while the
computing thread sits in one long call that reports nothing of its own: importing the libraries
(the count of Python modules loaded so far), loading a model (transformers' progress bars:
"Loading weights", a GGUF file's conversion; counted through its tqdm hook by ``weights_counted``)
and reading a batch of prompts before the first token is sampled (the decoder layers the pass has
gone through, ``layers_counted``). On a busy machine those calls took 7–35 s at a worker's share
of the CPU, and the line said the same thing all that time.

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

# the count of the long call in progress (what it counts, done, of how many); "ever": every item
# counted so far, of every call
_count = {"desc": "", "read": 0, "total": 0, "ever": 0}


def _moved() -> tuple[int, int]:
    return len(sys.modules), _count["ever"]


def _counted(read: int) -> None:
    _count["read"] = read
    _count["ever"] += 1


def _no_count() -> None:
    _count.update(desc="", read=0, total=0)


class _Counting:
    """A progress bar (tqdm, or transformers' empty stand-in) whose iteration counts into ``_count``."""

    def __init__(self, bar, items, desc: str):
        self.bar = bar
        _count.update(desc=desc.rstrip(". ").lower(), read=0, total=len(items))

    def __iter__(self):
        for i, item in enumerate(self.bar, 1):
            _counted(i)
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
        _no_count()


@contextmanager
def layers_counted(layers, desc: str):
    """While long forward passes run (a batch's prefill), count the decoder layers each has gone
    through ("reading the prompts, layer 17/30")."""
    handles = [
        layer.register_forward_pre_hook(lambda module, args: _counted(_count["read"] % len(layers) + 1))
        for layer in layers
    ]
    _count.update(desc=desc, read=0, total=len(layers))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
        _no_count()


class Heartbeat(threading.Thread):
    """Stamps ``heartbeat_at`` every second; when the job's line has not changed for ``QUIET_S`` and
    modules were loaded or a long call counted on since, it adds what moved to the line (``said`` is
    told each line the job reports)."""

    def __init__(self, store, job_id: int):
        super().__init__(name=f"heartbeat-{job_id}", daemon=True)
        self.store, self.job_id = store, job_id
        self._done = threading.Event()
        self._lock = threading.Lock()
        self._line: str | None = None
        self._at = 0.0
        self._seen = self._said = _moved()

    def said(self, line: str) -> None:
        with self._lock:
            self._line, self._at = line, time.monotonic()
            self._seen = self._said = _moved()

    def loading_line(self) -> str | None:
        """The job's line with what moved since it was said, once it has been quiet for QUIET_S (call
        with ``_lock`` held)."""
        now = _moved()
        if self._line is None or time.monotonic() - self._at < QUIET_S or now == self._seen:
            return None
        modules = f" · {now[0]} Python modules loaded" if now[0] != self._said[0] else ""
        self._seen = now
        bar = f" · {_count['desc']} {_count['read']}/{_count['total']}" if _count["total"] else ""
        return f"{self._line}{modules}{bar}"

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
