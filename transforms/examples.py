"""tf.train.Example encoding, in either record layout (the features: synanno_datagen.record_format).

``--record-layout instance`` (default): one record per instance holding what is unique to it, the
raw crop and the full mask once, and every variant's seed slices (``seed_slices`` concatenated in
variant order, ``seed_slice_counts`` one count per variant); a variant's seed mask is the target
on its slices, made by the reader. ``variant``: one record per variant, as the first versions
wrote, with ``seed_target`` and the variant's ``seed_slices`` (source and target repeated).

Serialization is deterministic (map keys sorted), so identical inputs give identical bytes.
"""
from __future__ import annotations



import numpy as np

from synanno_datagen.record_format import OPTIONAL_POINT_FEATURES, example_pb2
from synanno_datagen.transforms.records import Varied

def encode_example(varied: Varied, variant: int, seed_zyx: np.ndarray) -> bytes:
    """Serialized tf.train.Example for one variant of one instance (``variant`` layout)."""
    example, put_bytes, put_ints = _example_of(varied)
    put_bytes("seed_target", seed_zyx)
    put_ints("seed_slices", varied.seed_slices[variant])
    put_ints("variant", [variant])
    return example.SerializeToString(deterministic=True)


def encode_instance(varied: Varied) -> bytes:
    """Serialized tf.train.Example for one instance and all its variants (``instance`` layout)."""
    example, _, put_ints = _example_of(varied)
    put_ints("seed_slices", [z for slices in varied.seed_slices for z in slices])
    put_ints("seed_slice_counts", [len(slices) for slices in varied.seed_slices])
    return example.SerializeToString(deterministic=True)


def _example_of(varied: Varied):
    """An Example holding what both layouts share, and its put_bytes/put_ints (keys are sorted
    on serialization, so the order of the ``put`` calls does not change the bytes)."""
    inst = varied.instance
    example = example_pb2().Example()
    feature = example.features.feature

    def put_bytes(name, array):
        feature[name].bytes_list.value.append(np.ascontiguousarray(array, np.uint8).tobytes())

    def put_ints(name, values):
        feature[name].int64_list.value.extend(int(v) for v in values)

    put_bytes("source", varied.source_zyx)
    put_bytes("target", varied.target_zyx)
    put_ints("shape", varied.source_zyx.shape)
    put_ints("instance_id", [inst.instance_id])
    put_ints("center_xyz", inst.center_xyz)
    for name in OPTIONAL_POINT_FEATURES:
        if getattr(inst, name) is not None:
            put_ints(name, getattr(inst, name))
    put_ints("target_box_xyz", varied.target_box.start_xyz + varied.target_box.stop_xyz)
    put_ints("source_box_xyz", varied.source_box.start_xyz + varied.source_box.stop_xyz)
    put_ints("source_padding_xyz", [v for pair in varied.source_padding_xyz for v in pair])
    return example, put_bytes, put_ints
