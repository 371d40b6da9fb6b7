"""One shared thread pool: the compiled loops release the GIL, so threads scale.

Work submitted from inside a pool thread runs inline, so nested parallel calls (a
container decoding tensors in parallel, each codec splitting its own work) never deadlock.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Callable, Iterable, TypeVar

T = TypeVar("T")
R = TypeVar("R")

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


def in_background(fn: Callable[[], R], threads: int = 2):
    """Run fn() on the shared pool while the caller goes on; returns its Future."""
    return _get_pool(max(threads, 2)).submit(fn)
