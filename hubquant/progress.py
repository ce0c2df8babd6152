"""Progress while quantizing: a bar on a terminal, plain lines otherwise."""

from __future__ import annotations

import sys
import time

from hubquant.plan import Plan


class Progress:
    """Counts quantized layers and blocks; reports elapsed time and an ETA."""

    def __init__(self, plan: Plan, quiet: bool = False, stream=None):
        self.stream = stream or sys.stdout
        self.total = len(plan.layers())
        self.blocks = sorted({e.block for e in plan.quantized if e.block is not None})
        self.left: dict = {}
        for entries in plan.layers().values():
            self.left[entries[0].block] = self.left.get(entries[0].block, 0) + 1
        self.quiet = quiet
        self.done = 0
        self.seconds: dict[str, float] = {}  # per role: quantizing its layers
        self.other: dict[str, float] = {}  # work that is no role's (``spent``)
        self.start = self.last = time.perf_counter()
        self._bar = None
        if not quiet and self.stream.isatty():
            from rich.progress import BarColumn, Progress, TimeElapsedColumn, TimeRemainingColumn

            self._bar = Progress(
                "[progress.description]{task.description}",
                BarColumn(),
                "{task.completed}/{task.total} layers",
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                transient=True,
            )
            self._task = self._bar.add_task("quantizing", total=self.total)
            self._bar.start()

    def __call__(self, entries) -> None:
        """Called after each layer with its Plan entries."""
        now = time.perf_counter()
        for e in entries:
            self.seconds[e.role] = self.seconds.get(e.role, 0.0) + (now - self.last) / len(entries)
        self.last = now
        self.done += 1
        block = entries[0].block
        self.left[block] -= 1
        if self._bar is not None:
            where = "" if block is None else f" block {block + 1}/{len(self.blocks)}"
            self._bar.update(self._task, completed=self.done, description=f"quantizing{where}")
        elif not self.quiet and (self.left[block] == 0 or self.done == self.total):
            elapsed = now - self.start
            eta = elapsed / self.done * (self.total - self.done)
            label = "non-block layers" if block is None else f"block {block + 1}/{len(self.blocks)}"
            print(
                f"quantized {label} ({self.done}/{self.total} layers, {elapsed:.1f}s elapsed, "
                f"~{eta:.1f}s left)",
                file=self.stream,
                flush=True,
            )

    def spent(self, what: str) -> None:
        """Charge the time since the last event to ``what``, work that is no
        role's (running blocks on calibration text, reading weights)."""
        now = time.perf_counter()
        self.other[what] = self.other.get(what, 0.0) + now - self.last
        self.last = now

    def note(self, line: str) -> None:
        """A line about work before the first layer (generating calibration
        text): that time is charged to "calibration text", and the ETA
        counts from the last such line."""
        if self._bar is not None:
            self._bar.console.print(line, markup=False, highlight=False)
        elif not self.quiet:
            print(line, file=self.stream, flush=True)
        if self.done == 0:
            self.spent("calibration text")
            self.start = self.last

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
