"""Progress of long work, on a terminal and off it (logs, ``nohup``, CI).

On a terminal a rich progress bar; elsewhere a plain line on stderr at the start, every
``interval`` seconds and at the end, so a log shows the work is moving and how far.
"""

from __future__ import annotations

import sys
import time
from types import TracebackType
from typing import TextIO


class Progress:
    """Counts ``total`` units of ``description`` (e.g. 120 structures).

    with Progress("evaluating", 120, "structures") as progress:
        for batch in batches:
            ...
            progress.advance(len(batch))
    """

    def __init__(
        self,
        description: str,
        total: int,
        unit: str,
        *,
        stream: TextIO | None = None,
        interval: float = 10.0,
    ) -> None:
        self.description, self.total, self.unit = description, total, unit
        self.stream = stream or sys.stderr
        self.interval = interval
        self.done = 0
        self._bar = None
        self._start = self._last = 0.0

    def __enter__(self) -> Progress:
        self._start = self._last = time.perf_counter()
        if self.stream.isatty():
            from rich.console import Console
            from rich.progress import Progress as Bar

            self._bar = Bar(console=Console(file=self.stream), transient=True)
            self._bar.start()
            self._task = self._bar.add_task(self.description, total=self.total)
        else:
            self._line()
        return self

    def advance(self, units: int = 1) -> None:
        self.done += units
        if self._bar is not None:
            self._bar.advance(self._task, units)
        elif time.perf_counter() - self._last >= self.interval:
            self._line()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._bar is not None:
            self._bar.stop()
        elif kind is None:
            self._line()

    def _line(self) -> None:
        self._last = time.perf_counter()
        percent = 100.0 * self.done / self.total if self.total else 100.0
        print(
            f"{self.description}: {self.done}/{self.total} {self.unit} ({percent:.0f} %), "
            f"{self._last - self._start:.0f} s",
            file=self.stream,
            flush=True,
        )
