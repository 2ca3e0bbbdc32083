"""Progress of long work, on a terminal and off it (logs, ``nohup``, CI).

On a terminal a rich progress bar; elsewhere plain lines on stderr: one per stage, one
every ``interval`` seconds while work goes on, and a last one when work that printed
progress ends. Short work off a terminal stays quiet.
"""

from __future__ import annotations

import sys
import time
from types import TracebackType
from typing import Any, TextIO


class Progress:
    """Counts ``total`` units (e.g. 120 structures) of work called ``description``.

    with Progress("evaluating", 120, "structures") as progress:
        for batch in batches:
            ...
            progress.advance(len(batch))

    ``total`` None: a count without an end (a spinner on a terminal).
    """

    def __init__(
        self,
        description: str,
        total: int | None,
        unit: str,
        *,
        stream: TextIO | None = None,
        interval: float = 10.0,
    ) -> None:
        self.description, self.total, self.unit = description, total, unit
        self.stream = stream or sys.stderr
        self.interval = interval
        self.done = 0
        self._bar: Any = None
        self._start = self._last = 0.0
        self._printed: int | None = None

    def __enter__(self) -> Progress:
        self._start = self._last = time.perf_counter()
        if self.stream.isatty():
            from rich.console import Console
            from rich.progress import Progress as Bar

            self._bar = Bar(console=Console(file=self.stream), transient=True)
            self._bar.start()
            self._task = self._bar.add_task(self.description, total=self.total)
        return self

    def advance(self, units: int = 1) -> None:
        """``units`` more done."""
        self.done += units
        if self._bar is not None:
            self._bar.advance(self._task, units)
        elif time.perf_counter() - self._last >= self.interval:
            self._line()

    def stage(self, description: str, announce: bool = True) -> None:
        """The work now in progress, e.g. ``fp16: evaluating``: the bar's label on a
        terminal, elsewhere a line (``announce``) or the label of the next one."""
        self.description = description
        if self._bar is not None:
            self._bar.update(self._task, description=description)
        elif announce:
            self._line()

    def print(self, text: str) -> None:
        """A line of output that does not disturb the bar."""
        if self._bar is not None:
            self._bar.console.print(text)
        else:
            print(text, file=self.stream, flush=True)

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._bar is not None:
            self._bar.stop()
        elif kind is None and self._printed is not None and self._printed != self.done:
            self._line()

    def _line(self) -> None:
        self._last = time.perf_counter()
        self._printed = self.done
        count = f"{self.done} {self.unit}"
        if self.total:
            count = f"{self.done}/{self.total} {self.unit} ({100.0 * self.done / self.total:.0f} %)"
        print(
            f"{self.description}: {count}, {self._last - self._start:.0f} s",
            file=self.stream,
            flush=True,
        )


def output_console() -> Any:
    """A rich console for results on stdout: on a terminal as wide as it; elsewhere
    (logs, pipes) wide enough that tables are written whole and long lines (commands,
    paths) are not broken. Strings print as they are: no rich markup, so that brackets
    in messages (``pip install 'allegro-deploy[openvino]'``) and paths stay."""
    from rich.console import Console

    width = None if sys.stdout.isatty() else 200
    return Console(width=width, soft_wrap=True, markup=False)
