"""The CLI's progress line: a background thread that prints the in-process tally every few seconds.

It works where the DirectRunner runs bundles in this process (in_memory, multi_threading); for
other runners and multi_processing the CLI prints only the final summary (Dataflow shows the same
counters as Beam metrics, see ``transforms/progress.py``).
"""
from __future__ import annotations

import argparse
import threading
import time
from typing import Callable, Optional, Sequence, TextIO

from synanno_datagen.pipeline.run import DIRECT_RUNNERS

DEFAULT_INTERVAL_S = 5.0


def progress_line(counts: dict, elapsed_s: float) -> str:
    """e.g. ``progress: 120/301 instances done, 480 variants written, 3 failures, 40.1 instances/s``."""
    done = counts.get("instances_written", 0) + counts.get("instances_failed", 0)
    rate = done / elapsed_s if elapsed_s > 0 else 0.0
    return (f"progress: {done}/{counts.get('instances_selected', 0)} instances done, "
            f"{counts.get('variants_written', 0)} variants written, "
            f"{counts.get('failures', 0)} failures, {rate:.1f} instances/s, {elapsed_s:.0f} s")


def runs_in_process(beam_args: Sequence[str]) -> bool:
    """True if Beam runs the bundles in this process: the DirectRunner, not multi_processing."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--runner", default="DirectRunner")
    parser.add_argument("--direct_running_mode", default="in_memory")
    args, _ = parser.parse_known_args(list(beam_args))
    return (args.runner.lower() in DIRECT_RUNNERS
            and args.direct_running_mode != "multi_processing")


class ProgressPrinter:
    """Context manager: prints ``progress_line`` to ``stream`` every ``interval_s`` seconds while
    the body runs, and once more at the end if the body succeeded."""

    def __init__(self, stream: TextIO, interval_s: float = DEFAULT_INTERVAL_S):
        self._stream = stream
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._start = 0.0
        self._tally: Optional[Callable[[], dict]] = None

    def __enter__(self):
        from synanno_datagen.transforms.progress import reset_tally, tally  # imports Beam: only when running

        reset_tally()
        self._tally = tally
        self._start = time.monotonic()
        self._thread = threading.Thread(target=self._loop, name="progress", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, exc_type, exc, tb):
        self._stop.set()
        self._thread.join()
        if exc_type is None:
            self._print()
        return False

    def _loop(self):
        while not self._stop.wait(self._interval_s):
            self._print()

    def _print(self):
        if self._stream is None:
            return
        try:
            print(progress_line(self._tally(), time.monotonic() - self._start),
                  file=self._stream, flush=True)
        except OSError:   # a stream that takes no more (a full disk): no more progress lines
            self._stream = None
