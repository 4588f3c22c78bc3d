"""Progress bars for long work: rich on a terminal, periodic log lines elsewhere (Airflow, CI)."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

log = logging.getLogger("fulcrum")


@contextmanager
def progress(description: str, total: int, unit: str = "items") -> Iterator[Callable[[int], None]]:
    """Yield ``advance(n)``; shows a rich bar on a TTY, else logs every ~10 %."""
    start = time.perf_counter()
    if sys.stderr.isatty():
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        with Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn(unit), TimeElapsedColumn(), transient=False,
        ) as bar:
            task = bar.add_task(description, total=total)
            yield lambda n=1: bar.advance(task, n)
        return
    done = 0
    next_mark = 0.1

    def advance(n: int = 1) -> None:
        nonlocal done, next_mark
        done += n
        if total and done / total >= next_mark - 1e-9:
            log.info("%s: %d/%d %s (%.1f s)", description, done, total, unit, time.perf_counter() - start)
            next_mark = (int(done / total * 10) + 1) / 10

    yield advance
