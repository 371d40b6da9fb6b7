"""One shared thread pool: the compiled loops release the GIL, so threads scale.

Work submitted from inside a pool thread runs inline, so nested parallel calls (a
container decoding tensors in parallel, each codec splitting its own work) never deadlock.
"""

from __future__ import annotations

import functools
import math
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Callable, Iterable, TypeVar

T = TypeVar("T")
R = TypeVar("R")

CGROUP_CPU_MAX = "/sys/fs/cgroup/cpu.max"


@functools.cache
def cores() -> int:
    """The cores this process may use: its CPU affinity, capped by its cgroup's CPU quota
    (os.cpu_count() counts the host's: a container given 2 CPUs of a 64-core host would
    start 64 threads that take turns on 2)."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        with open(CGROUP_CPU_MAX) as f:
            quota = quota_cores(f.read())
    except OSError:
        quota = None
    return max(1, min(n, quota or n))


def quota_cores(cpu_max: str) -> int | None:
    """Cores a cgroup v2 cpu.max line ("QUOTA PERIOD", or "max PERIOD") allows; None: no limit."""
    parts = cpu_max.split()
    if len(parts) != 2 or parts[0] == "max":
        return None
    try:
        quota, period = int(parts[0]), int(parts[1])
    except ValueError:
        return None
    return max(1, math.ceil(quota / period)) if quota > 0 and period > 0 else None


_pool: ThreadPoolExecutor | None = None
_lock = threading.Lock()
_local = threading.local()


def _get_pool(threads: int) -> ThreadPoolExecutor:
    global _pool
    with _lock:
        if _pool is None or _pool._max_workers < threads:
            _pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="nzip",
                                       initializer=lambda: setattr(_local, "inside", True))
        return _pool


def pmap(fn: Callable[[T], R], items: Iterable[T], threads: int,
         cost: Callable[[T], float] | None = None) -> list[R]:
    """map(fn, items) on up to `threads` threads, results in order; threads=1 runs inline.
    With `cost`, the costliest items start first (keeps threads evenly busy)."""
    items = list(items)
    if threads <= 1 or len(items) <= 1 or getattr(_local, "inside", False):
        return [fn(x) for x in items]
    pool = _get_pool(threads)
    out: list = [None] * len(items)
    # at most `threads` workers at once, each taking the next item when free
    order = sorted(range(len(items)), key=lambda i: -cost(items[i])) if cost else range(len(items))
    todo = iter(order)  # next() on a shared iterator hands each index to one worker
    lock = threading.Lock()

    def run() -> None:
        while True:
            with lock:
                i = next(todo, None)
            if i is None:
                return
            out[i] = fn(items[i])

    futures = [pool.submit(run) for _ in range(min(threads, len(items)))]
    wait(futures)  # all of them, even after a failure: callers may free what workers read
    for f in futures:
        f.result()
    return out


def split_big(items: list, threads: int, cost: Callable[[T], float]) -> tuple[list, list]:
    """(big, small): items costing more than a thread's fair share, to run alone with every
    thread inside them, and the rest (costliest first), to run side by side."""
    if threads <= 1:
        return [], sorted(items, key=lambda x: -cost(x))
    share = sum(cost(x) for x in items) / threads
    return ([x for x in items if cost(x) > share],
            sorted((x for x in items if cost(x) <= share), key=lambda x: -cost(x)))


def pmap_balanced(fn: Callable[[T, int], R], items: Iterable[T], threads: int,
                  cost: Callable[[T], float]) -> list[R]:
    """map over items of very different sizes: fn(item, inner_threads). An item costing
    more than a thread's fair share (a huge embedding among small layers) runs alone with
    every thread inside it; the others run side by side, one thread each."""
    items = list(items)
    if threads <= 1 or len(items) <= 1:
        return [fn(x, threads) for x in items]
    costs = [cost(x) for x in items]
    big, small = split_big(list(range(len(items))), threads, cost=lambda i: costs[i])
    out: list = [None] * len(items)
    for i in big:
        out[i] = fn(items[i], threads)
    for i, r in zip(small, pmap(lambda i: fn(items[i], 1), small, threads)):
        out[i] = r
    return out


class SideTask:
    """Work to run once, on whichever thread comes free first: a compiled batch runs it on
    one of its own threads when that thread has nothing better to do (the ans decoder, once
    it has faulted in its output), so that it takes no core from the batch; else start() puts
    it on the pool; result() runs it on the spot if nobody has yet, and waits for it."""

    def __init__(self, fn: Callable[[], R]):
        self._fn = fn
        self._lock = threading.Lock()
        self._future: Future | None = None

    def _claim(self) -> Future | None:
        with self._lock:
            if self._future is not None:
                return None
            self._future = Future()
            return self._future

    def _fill(self, future: Future) -> None:
        try:
            future.set_result(self._fn())
        except BaseException as exc:  # handed to result()
            future.set_exception(exc)

    def run(self) -> None:
        """Run it here, unless it has run or is running elsewhere; never raises (result() does)."""
        future = self._claim()
        if future is not None:
            self._fill(future)

    def start(self, threads: int = 2) -> None:
        """Run it on the pool, unless it has run or is running elsewhere (inline when called
        from the pool: its workers may all be waiting on this one)."""
        future = self._claim()
        if future is not None and getattr(_local, "inside", False):
            self._fill(future)
        elif future is not None:
            _get_pool(max(threads, 2)).submit(self._fill, future)

    def result(self):
        self.run()
        return self._future.result()
