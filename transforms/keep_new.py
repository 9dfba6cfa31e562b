"""KeepNewInstances: an incremental run keeps only the instances earlier runs do not hold."""
from __future__ import annotations

from typing import Iterable, List

import apache_beam as beam

from synanno_datagen.transforms.files import read_jsonl


def read_index_ids(path: str) -> Iterable[int]:
    """The instance ids of one index shard (one JSON line per instance)."""
    return (int(entry["instance_id"]) for entry in read_jsonl(path))


class KeepNewInstances(beam.PTransform):
    """{"instances": Instance, "rejected": DeadLetter of the table} -> dict ``ok`` (instances
    whose ids are in none of the earlier index shards) and ``vanished`` (earlier ids no longer
    in the table: neither an instance now nor the id of a rejected row). Only ids cross the
    shuffle."""

    def __init__(self, index_paths: List[str]):
        super().__init__()
        self._paths = list(index_paths)

    def expand(self, inputs):
        instances, rejected = inputs["instances"], inputs["rejected"]
        keyed = instances | "KeyById" >> beam.Map(lambda i: (i.instance_id, i))
        earlier = (instances.pipeline
                   | "EarlierIndex" >> beam.Create(self._paths)
                   | "EarlierIds" >> beam.FlatMap(read_index_ids)
                   | "KeyEarlier" >> beam.Map(lambda i: (i, None)))
        still = rejected | "RejectedIds" >> beam.FlatMap(
            lambda d: [] if d.instance_id is None else [(d.instance_id, None)])
        # (id, {"now": [Instance], "earlier": [None], "rejected": [None]})
        joined = ({"now": keyed, "earlier": earlier, "rejected": still}
                  | "Join" >> beam.CoGroupByKey())
        return {
            "ok": joined | "New" >> beam.FlatMap(
                lambda kv: [] if list(kv[1]["earlier"]) else list(kv[1]["now"])),
            "vanished": joined | "Vanished" >> beam.FlatMap(
                lambda kv: [kv[0]] if list(kv[1]["earlier"]) and not list(kv[1]["now"])
                and not list(kv[1]["rejected"]) else []),
        }
