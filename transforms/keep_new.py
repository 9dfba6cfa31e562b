"""KeepNewInstances: an incremental run keeps only the instances earlier runs do not hold."""
from __future__ import annotations

from typing import Callable, Collection, Iterable, List, Optional, Sequence, Tuple, Union

import apache_beam as beam

from synanno_datagen.record_format import OPTIONAL_POINT_FEATURES
from synanno_datagen.transforms.files import read_jsonl
from synanno_datagen.transforms.records import (
    CHANGED_SINCE_WRITTEN, DEAD, DUPLICATE_ID, DeadLetter, Instance,
)
from synanno_datagen.transforms.remembered import INSTANCE, fingerprint
from synanno_datagen.transforms.table import duplicate_letter, in_table_order

POINT_KEYS = ("center_xyz",) + OPTIONAL_POINT_FEATURES   # an instance's points, target voxels

Points = Tuple[Optional[Tuple[int, ...]], ...]


def instance_points(instance: Instance) -> Points:
    """The points of an instance (centre, pre, post; None for a point the table lacks)."""
    return tuple(None if getattr(instance, k) is None else tuple(getattr(instance, k))
                 for k in POINT_KEYS)


def read_index_points(path: str) -> Iterable[Tuple[int, Points]]:
    """(instance id, its points as written) of each line of one index shard."""
    for entry in read_jsonl(path):
        yield int(entry["instance_id"]), tuple(
            None if entry.get(k) is None else tuple(entry[k]) for k in POINT_KEYS)


def changed_letter(instance: Instance, written: Points) -> DeadLetter:
    """The dead letter of an instance whose id an earlier run wrote with other points."""
    def shown(points):
        return ", ".join(f"{k[:-4]} {list(p)}" for k, p in zip(POINT_KEYS, points)
                         if p is not None)
    return DeadLetter.for_instance(
        instance, CHANGED_SINCE_WRITTEN,
        f"id {instance.instance_id} is in the dataset with {shown(written)} (target voxels); "
        f"the table now has {shown(instance_points(instance))}: its records are not rebuilt "
        "(a new root rebuilds every instance)", "KeepNewInstances")


def held_letter(dup: Instance, held: Instance) -> DeadLetter:
    """The duplicate_id letter of a row of an id whose later row, ``held``, has the points the
    dataset holds for it, so that row is kept."""
    return DeadLetter.for_instance(
        dup, DUPLICATE_ID, f"id {dup.instance_id} is in the dataset with the points of table "
        f"shard {held.ref.table_shard} row {held.ref.row}", "KeepNewInstances")


def tried_letter(dup: Instance, tried: Instance) -> DeadLetter:
    """The duplicate_id letter of a row of an id whose later row, ``tried``, is the one an
    earlier run fetched and remembers as failed, so that row is kept."""
    return DeadLetter.for_instance(
        dup, DUPLICATE_ID, f"id {dup.instance_id} was tried as table shard "
        f"{tried.ref.table_shard} row {tried.ref.row} (remembered as failed)", "KeepNewInstances")


def keep_one(instances: List[Instance], written: Optional[Points],
             failed: Collection[str] = (), columns: Optional[Sequence[str]] = None
             ) -> Tuple[Instance, List[DeadLetter]]:
    """The rows of one id -> (the instance kept, duplicate_id letters of the others): the
    earliest row (table shard, row) whose points are ``written`` (the dataset's for the id);
    of an id the dataset lacks, the earliest whose row fingerprint (remembered.fingerprint over
    ``columns``) is in ``failed`` (an earlier run's fetch of it failed for good); else the
    earliest row. So a table in another order keeps the row the earlier runs kept."""
    ordered = in_table_order(instances)
    kept = None
    if written is not None:
        kept = next((i for i in ordered if instance_points(i) == written), None)
        letter = held_letter
    elif failed and len(ordered) > 1:
        kept = next((i for i in ordered if fingerprint(i.row, columns) in failed), None)
        letter = tried_letter
    if kept is None or kept is ordered[0]:
        kept, letter = ordered[0], duplicate_letter
    return kept, [letter(dup, kept) for dup in ordered if dup is not kept]


def _failed_instance(entry: dict) -> Iterable[Tuple[int, str]]:
    """A memory entry -> (its id, its row's fingerprint) when it remembers a failed fetch."""
    if entry["kind"] == INSTANCE and isinstance(entry.get("instance_id"), int):
        yield entry["instance_id"], entry["fingerprint"]


def _split(kv, columns: Optional[Sequence[str]] = None):
    """One joined id -> ("ok", Instance) | ("dead", DeadLetter: duplicate_id, changed) |
    ("vanished", id)."""
    instance_id, groups = kv
    now, earlier = list(groups["now"]), list(groups["earlier"])
    if not now:
        return [("vanished", instance_id)] if earlier and not list(groups["rejected"]) else []
    written = earlier[0] if earlier else None
    kept, duplicates = keep_one(now, written, set(groups.get("failed", ())), columns)
    out = [("dead", letter) for letter in duplicates]
    if written is None:
        out.append(("ok", kept))
    elif instance_points(kept) != written:
        out.append(("dead", changed_letter(kept, written)))
    return out


class KeepNewInstances(beam.PTransform):
    """{"instances": Instance of every valid row (an id's repeats too), "rejected": DeadLetter
    of the table[, "remembered": the entries of the memory this run skips]} -> dict ``ok`` (one
    instance per id in none of the earlier index shards), ``dead_letter`` (an id's other rows,
    ``duplicate_id``: keep_one keeps the row whose points the dataset holds, else the row whose
    fetch is remembered as failed, else the earliest; an id earlier runs wrote whose points in
    the table differ now: ``changed_since_written``, as its records are not rebuilt) and
    ``vanished`` (earlier ids no longer in the table: neither an instance now nor the id of a
    rejected row). The repeats are chosen among in this join, so the table's rows cross one
    shuffle, the earlier runs' ids and points, and the failed fetches' ids, with them.
    ``columns``: those the memory's fingerprints cover (the run's read_columns).
    ``index_paths``: the earlier index shards, or a function giving them in the job (a
    dataset's listing grows with it: it is not carried in the job's description)."""

    def __init__(self, index_paths: Union[Sequence[str], Callable[[], List[str]]],
                 columns: Optional[Sequence[str]] = None):
        super().__init__()
        self._paths = index_paths if callable(index_paths) else tuple(index_paths)
        self._columns = columns

    def expand(self, inputs):
        instances, rejected = inputs["instances"], inputs["rejected"]
        keyed = instances | "KeyById" >> beam.Map(lambda i: (i.instance_id, i))
        paths = self._paths
        earlier = (instances.pipeline
                   | "EarlierRun" >> beam.Create([None])
                   | "EarlierIndex" >> beam.FlatMap(
                       lambda _: paths() if callable(paths) else paths)
                   | "SpreadIndex" >> beam.Reshuffle()   # shards read by every worker
                   | "EarlierPoints" >> beam.FlatMap(read_index_points))
        still = rejected | "RejectedIds" >> beam.FlatMap(
            lambda d: [] if d.instance_id is None else [(d.instance_id, None)])
        # (id, {"now": [Instance], "earlier": [Points], "rejected": [None], "failed": [str]})
        joined = {"now": keyed, "earlier": earlier, "rejected": still}
        if "remembered" in inputs:
            joined["failed"] = inputs["remembered"] | "FailedFetches" >> beam.FlatMap(
                _failed_instance)
        parts = (joined
                 | "Join" >> beam.CoGroupByKey()
                 | "Split" >> beam.FlatMap(_split, self._columns)
                 | "ByKind" >> beam.Partition(
                     lambda kv, n: ("ok", "dead", "vanished").index(kv[0]), 3))
        return {name: part | f"{name.title()}Values" >> beam.Map(lambda kv: kv[1])
                for name, part in zip(("ok", DEAD, "vanished"), parts)}
