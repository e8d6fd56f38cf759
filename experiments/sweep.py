"""Fan the points of a sweep out: local processes by default, or a Dask cluster.

    with open_pool(None) as pool:                      # local processes
        values = pool.map(simulate_point, points, "coverage")
    with open_pool("tcp://127.0.0.1:8786") as pool:    # a running Dask scheduler
        ...

`map` returns results in the order of the points. A progress bar (tqdm) is shown
on a terminal. The functions must be importable module-level functions, since
they travel to other processes by name.
"""
from __future__ import annotations

import multiprocessing
import os
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import contextmanager

#: Seconds to wait for a Dask scheduler before giving up.
DASK_CONNECT_TIMEOUT_S = 10.0


class Pool:
    """Runs `function` over `points`; subclasses choose where."""

    def __init__(self, progress: bool | None = None):
        self.progress = sys.stderr.isatty() if progress is None else progress

    def _bar(self, total: int, label: str):
        from tqdm import tqdm
        return tqdm(total=total, desc=label or "points", disable=not self.progress, leave=False,
                    file=sys.stderr)

    def map(self, function, points: list, label: str = "") -> list:
        raise NotImplementedError


class LocalPool(Pool):
    """Local worker processes (one per core); a single point, or one core, runs in this process."""

    def __init__(self, workers: int | None = None, progress: bool | None = None):
        super().__init__(progress)
        self.workers = workers or os.cpu_count() or 1
        self.executor = None

    def map(self, function, points, label=""):
        results = [None] * len(points)
        with self._bar(len(points), label) as bar:
            if self.workers == 1 or len(points) <= 1:
                for i, point in enumerate(points):
                    results[i] = function(point)
                    bar.update()
                return results
            if self.executor is None:   # spawned, not forked: this process may run numba's OpenMP threads
                self.executor = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"))
            futures = {self.executor.submit(function, point): i for i, point in enumerate(points)}
            for future in as_completed(futures):
                results[futures[future]] = future.result()
                bar.update()
        return results

    def close(self):
        if self.executor is not None:
            self.executor.shutdown()


class DaskPool(Pool):
    """The workers of a Dask cluster reached at `address`."""

    def __init__(self, address: str, progress: bool | None = None, timeout_s: float = DASK_CONNECT_TIMEOUT_S):
        super().__init__(progress)
        from experiments.runner import ExperimentError
        try:
            from distributed import Client
        except ImportError:
            raise ExperimentError("--dask: the 'distributed' package is not installed "
                                  "(pip install 'dask[distributed]')") from None
        try:
            self.client = Client(address, timeout=f"{timeout_s}s")
        except (OSError, TimeoutError, ValueError, TypeError) as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ExperimentError(f"--dask {address}: no scheduler reachable within {timeout_s:g} s "
                                  f"({reason})") from None

    def map(self, function, points, label=""):
        from distributed import as_completed as dask_completed
        futures = self.client.map(function, points, pure=False)
        with self._bar(len(points), label) as bar:
            for _ in dask_completed(futures):
                bar.update()
        return self.client.gather(futures)

    def close(self):
        self.client.close()


@contextmanager
def open_pool(dask: str | None = None, progress: bool | None = None, workers: int | None = None):
    """A DaskPool when a scheduler address is given, else a LocalPool; closed on exit."""
    pool = DaskPool(dask, progress) if dask else LocalPool(workers, progress)
    try:
        yield pool
    finally:
        pool.close()
