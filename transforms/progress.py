"""Progress counters: Beam metrics with stable names, mirrored in an in-process tally.

``ProgressCounter(name).inc(n)`` adds to the Beam counter ``synanno/<name>`` (what Dataflow shows)
and to a tally in this process. The tally is read by the CLI's progress line while the
DirectRunner runs in process; it never affects what a run writes. Where bundles run in other
processes (multi_processing, Dataflow) only the Beam counters see them.

Names: ``instances_selected``, ``instances_written``, ``variants_written``, ``failures`` (every
dead letter), ``instances_failed`` (dead letters after selection) and ``failures_<reason>``.
"""
from __future__ import annotations

import collections
import threading
from typing import Dict

import apache_beam as beam
from apache_beam.metrics import Metrics

from synanno_datagen.transforms.records import TABLE_REASONS, DeadLetter

NAMESPACE = "synanno"
_lock = threading.Lock()
_tally: Dict[str, int] = collections.Counter()


class ProgressCounter:
    """A Beam counter ``synanno/<name>`` that also adds to this process's tally."""

    def __init__(self, name: str):
        self.name = name
        self._metric = Metrics.counter(NAMESPACE, name)

    def inc(self, n: int = 1) -> None:
        self._metric.inc(n)
        with _lock:
            _tally[self.name] += n


def tally() -> Dict[str, int]:
    """A snapshot of this process's counts since ``reset_tally``."""
    with _lock:
        return dict(_tally)


def reset_tally() -> None:
    with _lock:
        _tally.clear()


class CountFn(beam.DoFn):
    """Passes elements through, counting them as ``name``."""

    def __init__(self, name: str):
        self._counter = ProgressCounter(name)

    def process(self, element):
        self._counter.inc()
        yield element


class CountDeadLettersFn(beam.DoFn):
    """Passes dead letters through, counting ``failures``, ``failures_<reason>`` and, past the
    table, ``instances_failed``."""

    def __init__(self):
        self._failures = ProgressCounter("failures")
        self._instances = ProgressCounter("instances_failed")

    def process(self, letter: DeadLetter):
        self._failures.inc()
        ProgressCounter(f"failures_{letter.reason}").inc()
        if letter.reason not in TABLE_REASONS:
            self._instances.inc()
        yield letter
