"""KeepNewInstances: an incremental run keeps only the instances earlier runs do not hold."""
from __future__ import annotations

from typing import Iterable, List, Optional, Tuple

import apache_beam as beam

from synanno_datagen.transforms.examples import OPTIONAL_POINT_FEATURES
from synanno_datagen.transforms.files import read_jsonl
from synanno_datagen.transforms.records import CHANGED_SINCE_WRITTEN, DEAD, DeadLetter, Instance

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


def _split(kv):
    """One joined id -> ("ok", Instance) | ("changed", DeadLetter) | ("vanished", id) | ()."""
    instance_id, groups = kv
    now, earlier = list(groups["now"]), list(groups["earlier"])
    if not earlier:
        return [("ok", i) for i in now]
    if now:
        return [("changed", changed_letter(i, earlier[0])) for i in now
                if instance_points(i) != earlier[0]]
    return [] if list(groups["rejected"]) else [("vanished", instance_id)]


class KeepNewInstances(beam.PTransform):
    """{"instances": Instance, "rejected": DeadLetter of the table} -> dict ``ok`` (instances
    whose ids are in none of the earlier index shards), ``dead_letter`` (an id earlier runs
    wrote whose points in the table differ now: ``changed_since_written``, as its records are
    not rebuilt) and ``vanished`` (earlier ids no longer in the table: neither an instance now
    nor the id of a rejected row). Only ids and points cross the shuffle."""

    def __init__(self, index_paths: List[str]):
        super().__init__()
        self._paths = list(index_paths)

    def expand(self, inputs):
        instances, rejected = inputs["instances"], inputs["rejected"]
        keyed = instances | "KeyById" >> beam.Map(lambda i: (i.instance_id, i))
        earlier = (instances.pipeline
                   | "EarlierIndex" >> beam.Create(self._paths)
                   | "EarlierPoints" >> beam.FlatMap(read_index_points))
        still = rejected | "RejectedIds" >> beam.FlatMap(
            lambda d: [] if d.instance_id is None else [(d.instance_id, None)])
        # (id, {"now": [Instance], "earlier": [Points], "rejected": [None]})
        parts = ({"now": keyed, "earlier": earlier, "rejected": still}
                 | "Join" >> beam.CoGroupByKey()
                 | "Split" >> beam.FlatMap(_split)
                 | "ByKind" >> beam.Partition(
                     lambda kv, n: ("ok", "changed", "vanished").index(kv[0]), 3))
        return {name: part | f"{name.title()}Values" >> beam.Map(lambda kv: kv[1])
                for name, part in zip(("ok", DEAD, "vanished"), parts)}
