"""Running a simulation's cells for the ``armlab simulate`` commands: in worker processes when
there are several cells and workers, else in this one; with the wall time."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

_C = TypeVar("_C")


def run_cells(run: Callable[[_C], dict[str, Any]], cells: Sequence[_C], workers: int
              ) -> tuple[list[dict[str, Any]], float]:
    """(each cell's result in order, seconds); ``run`` must be a module-level function (it
    is sent to the worker processes)."""
    from concurrent.futures import ProcessPoolExecutor

    t0 = time.perf_counter()
    if workers > 1 and len(cells) > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            results = list(pool.map(run, cells))
    else:
        results = [run(c) for c in cells]
    return results, round(time.perf_counter() - t0, 1)
