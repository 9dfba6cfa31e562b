"""Pure, process-independent hashing for picking instances and splits.

Python's ``hash(str)`` changes between processes; these use blake2b so every worker and every rerun
agree.
"""
from __future__ import annotations

import hashlib
from typing import Sequence, Tuple

import apache_beam as beam

_SPAN = float(1 << 64)


def stable_hash(*parts) -> int:
    """64-bit unsigned hash of the parts' ``repr``s, identical on every machine and process."""
    text = "\x1f".join(repr(p) for p in parts).encode("utf-8")
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "big")


def selection_key(run_seed: int, instance_id: int) -> Tuple[int, int]:
    """Instances with the N smallest keys are picked by ``--num-instances N``.

    A pure function of (seed, id): adding rows to a table changes the pick only by the new rows
    that rank among the N smallest.
    """
    return stable_hash("select", int(run_seed), int(instance_id)), int(instance_id)


def assign_split(run_seed: int, instance_id: int, splits: Sequence[Tuple[str, float]]) -> str:
    """Split name for an instance: a pure function of (seed, id) and the split fractions."""
    return pick_split(stable_hash("split", int(run_seed), int(instance_id)), splits)


def pick_split(hash64: int, splits: Sequence[Tuple[str, float]]) -> str:
    """The split a 64-bit hash falls in, the fractions laid end to end over [0, 1)."""
    u = hash64 / _SPAN
    total = 0.0
    for name, fraction in splits:
        total += fraction
        if u < total:
            return name
    return splits[-1][0]


class SmallestDistinct(beam.CombineFn):
    """Values -> sorted list of the ``n`` smallest distinct values (memory O(n) per accumulator).

    Used on ``selection_key``s, which repeat when an id repeats in the table, so picking N
    distinct keys picks N distinct ids.
    """

    def __init__(self, n: int):
        self._n = n

    def _compact(self, values):
        return sorted(set(values))[:self._n]

    def create_accumulator(self):
        return []

    def add_input(self, accumulator, value):
        accumulator.append(value)
        if len(accumulator) >= 2 * self._n + 64:
            accumulator[:] = self._compact(accumulator)
        return accumulator

    def merge_accumulators(self, accumulators):
        return self._compact(v for a in accumulators for v in a)

    def extract_output(self, accumulator):
        return self._compact(accumulator)


class SelectInstances(beam.PTransform):
    """Instances -> the ``n`` instances with the smallest ``selection_key`` (memory O(n))."""

    def __init__(self, run_seed: int, n: int):
        super().__init__()
        self._seed = run_seed
        self._n = n

    def expand(self, instances):
        seed = self._seed
        return (instances
                | "SmallestKeys" >> beam.combiners.Top.Of(
                    self._n, key=lambda i: selection_key(seed, i.instance_id), reverse=True)
                | "Unpack" >> beam.FlatMap(lambda picked: picked))
