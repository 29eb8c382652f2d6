"""Progress on long work (a schema upgrade, a prune, an import, a full export, a first sync): a bar on stderr
while it is a terminal, redrawn in place with the time it has taken; nothing at all otherwise (Jenkins logs,
pipes, files). The library reports ``(done, total)`` through a plain callback; this module draws it."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Optional

import click

#: what the library calls with (done, total): units of its own (steps, rows, points)
Progress = Callable[[int, int], None]
#: how often the bar is redrawn while nothing moves (a single long step: the time taken still runs)
TICK = 1.0


@contextmanager
def progress(label: str) -> Iterator[Optional[Progress]]:
    """A callback drawing a bar labelled ``label`` on stderr, or None when stderr is not a terminal; the bar ends
    (its line closed) when the block does, whether it succeeded or not."""
    if not sys.stderr.isatty():
        yield None
        return
    meter = _Meter(label)
    try:
        yield meter.update
        meter.complete()  # whatever the last count said (a source that does not count, rows a prune left)
    finally:
        meter.close()


class _Meter:
    """A click progress bar fed from the library's callback, and redrawn every :data:`TICK` by a thread."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.start = time.monotonic()
        self.lock = threading.Lock()
        self.stopped = threading.Event()
        self.bar: Any = click.progressbar(length=1, label=self._label(), file=sys.stderr, show_eta=True,
                                          show_percent=True, show_pos=False)
        self.bar.render_progress()
        self.thread = threading.Thread(target=self._tick, name="progress", daemon=True)
        self.thread.start()

    def _label(self) -> str:
        return f"{self.label} ({time.monotonic() - self.start:.0f} s)"

    def update(self, done: int, total: int) -> None:
        with self.lock:
            bar = self.bar
            bar.length = max(total, 1)
            bar.finished = False
            bar.label = self._label()
            bar.update(max(0, min(done, bar.length) - bar.pos))

    def complete(self) -> None:
        with self.lock:
            self.bar.pos = self.bar.length
            self.bar.finished = True

    def _tick(self) -> None:
        while not self.stopped.wait(TICK):
            with self.lock:
                self.bar.label = self._label()
                self.bar.render_progress()

    def close(self) -> None:
        self.stopped.set()
        self.thread.join()
        with self.lock:
            self.bar.label = self._label()
            self.bar.render_progress()
            self.bar.render_finish()
