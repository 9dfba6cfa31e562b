"""The one record decoder: TFRecord framing (Beam's, CRC-checked) over any file Beam's
FileSystems opens (local or gs://, streamed), and tf.train.Example -> numpy.

Arrays come back as read-only uint8 (z, y, x) views of the record's bytes, shaped by its
``shape`` feature; int64 features as lists of ints (scalars for ``instance_id`` and ``variant``).
"""
from __future__ import annotations

from typing import Iterable, Iterator, Optional

import numpy as np

ARRAYS = ("source", "target", "seed_target")
SCALARS = ("instance_id", "variant")


def iter_serialized(stream) -> Iterator[bytes]:
    """The serialized records of an open TFRecord file, in order."""
    from apache_beam.io.tfrecordio import _TFRecordUtil

    while True:
        record = _TFRecordUtil.read_record(stream)
        if record is None:
            return
        yield record


def decode(serialized: bytes, keys: Optional[Iterable[str]] = None) -> dict:
    """One tf.train.Example -> {feature: value} for ``keys`` (default: every feature)."""
    from synanno_datagen.transforms.examples import example_pb2

    example = example_pb2().Example.FromString(serialized)
    feature = example.features.feature
    shape = tuple(int(v) for v in feature["shape"].int64_list.value)
    out = {}
    for key in (feature.keys() if keys is None else keys):
        if key not in feature:
            continue
        value = feature[key]
        if value.HasField("bytes_list"):
            out[key] = np.frombuffer(value.bytes_list.value[0], np.uint8).reshape(shape)
        else:
            ints = [int(v) for v in value.int64_list.value]
            out[key] = ints[0] if key in SCALARS else ints
    return out


def read_records(dataset, tfrecord_file: dict, keys: Optional[Iterable[str]] = None
                 ) -> Iterator[dict]:
    """Decoded records of one TFRecord shard (a manifest file entry) of ``dataset``."""
    keys = None if keys is None else tuple(keys)
    with dataset.open(tfrecord_file["path"]) as stream:
        for serialized in iter_serialized(stream):
            yield decode(serialized, keys)
