"""Progress of a run: a rich bar on a terminal, plain lines elsewhere.

Written to a file or a pipe (``zsqbench run ... > log``, CI, ``nohup``), a rich bar prints nothing until the run
ends. :class:`LineProgress` has the same small interface the loop and the synthesizers use (``add_task``,
``advance``, ``update``, a context manager) and prints one plain line per task at most every ``interval_s``
seconds (default 30, ``$ZSQBENCH_PROGRESS_S``), plus one when a task starts and one when it completes:

    [progress] distill 240/1000 (24 %) 1.9 step/s, elapsed 2m06s, ETA 6m40s · loss -913.2
"""
from __future__ import annotations

import os
import sys
import time


def make_progress(quiet: bool, stream=None):
    """None when quiet; a rich Progress on a terminal; otherwise a LineProgress on ``stream`` (stdout)."""
    if quiet:
        return None
    stream = stream or sys.stdout
    if stream.isatty() and os.environ.get("ZSQBENCH_PROGRESS") != "lines":
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, \
            TimeRemainingColumn
        return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
                        transient=False)
    return LineProgress(stream)


def _duration(s: float) -> str:
    s = int(round(s))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


class _Task:
    def __init__(self, description: str, total: int | None, info: str):
        self.description, self.total, self.info = description, total, info
        self.completed = 0
        self.start = 0
        self.t0 = time.monotonic()
        self.last_line = self.t0
        self.finished = False


class LineProgress:
    """Plain progress lines for a non-terminal: phase, step, rate, elapsed, ETA and the latest info."""

    def __init__(self, stream=None, interval_s: float | None = None):
        self.stream = stream or sys.stdout
        self.interval_s = float(interval_s if interval_s is not None else os.environ.get("ZSQBENCH_PROGRESS_S", 30))
        self.tasks: list[_Task] = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def add_task(self, description: str, total: int | None = None, info: str = "", completed: float = 0,
                 **fields) -> int:
        self.tasks.append(_Task(description, total, info))
        self.tasks[-1].unit = fields.get("unit", "step")
        self.tasks[-1].completed = completed
        self.tasks[-1].start = completed  # the rate counts what this process did, not what was done before
        task_id = len(self.tasks) - 1
        self._line(self.tasks[task_id], "started")
        return task_id

    def advance(self, task_id: int, advance: float = 1) -> None:
        self.update(task_id, advance=advance)

    def update(self, task_id: int, advance: float = 0, info: str | None = None, completed: float | None = None,
               **fields) -> None:
        task = self.tasks[task_id]
        if completed is not None:
            task.completed = completed
        task.completed += advance
        if info is not None:
            task.info = info
        now = time.monotonic()
        done = task.total is not None and task.completed >= task.total
        if done and not task.finished:
            task.finished = True
            self._line(task, "done")
        elif not done and now - task.last_line >= self.interval_s:
            self._line(task)

    def _line(self, task: _Task, what: str = "") -> None:
        now = time.monotonic()
        task.last_line = now
        elapsed = now - task.t0
        parts = [f"[progress] {task.description}"]
        if task.total:
            parts.append(f"{int(task.completed)}/{task.total} ({100 * task.completed / task.total:.0f} %)")
        if what == "started":
            parts.append("started")
        else:
            rate = (task.completed - task.start) / elapsed if elapsed > 0 else 0.0
            if rate > 0:
                unit = getattr(task, "unit", "step")
                parts.append(f"{rate:.1f} {unit}/s" if rate >= 1 else f"{1 / rate:.1f} s/{unit}")
            parts.append(f"elapsed {_duration(elapsed)}")
            if what == "done":
                parts.append("done")
            elif task.total and rate > 0:
                parts.append(f"ETA {_duration((task.total - task.completed) / rate)}")
        line = " ".join(parts[:2]) + (" " + ", ".join(parts[2:]) if parts[2:] else "")
        if task.info:
            line += f" · {task.info}"
        print(line, file=self.stream, flush=True)
