"""
The dashboard's reads, on a small pool of threads of their own.

asyncio's default thread pool also resolves the upstreams' host names: with
searches queued there, proxied requests waited for them (16 s instead of 6 ms
seen). Here at most WORKERS reads run and WAITING more wait their turn; a read
beyond that is refused at once, and the store stops any read after its time
limit, so the dashboard can be slow but can never hold up the proxy.
"""

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import ThreadPoolExecutor
from typing import Any

WORKERS = 2
WAITING = 8


class Busy(Exception):
    """Every worker is busy and the queue is full."""


class QueryPool:
    def __init__(self, workers: int = WORKERS, waiting: int = WAITING) -> None:
        self.executor = ThreadPoolExecutor(workers, thread_name_prefix="rerouter-dashboard")
        self.limit = workers + waiting
        self.pending = 0
        self.lock = threading.Lock()

    async def run(self, function: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        with self.lock:
            if self.pending >= self.limit:
                raise Busy()
            self.pending += 1
        # counted until the thread is done with it, even when the waiting request is gone
        future = self.executor.submit(function, *args, **kwargs)
        future.add_done_callback(self._release)
        return await asyncio.wrap_future(future)

    def _release(self, _: Future) -> None:
        with self.lock:
            self.pending -= 1

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)
