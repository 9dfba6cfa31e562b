"""tf.train.Example encoding, in either record layout, and the feature spec the manifest publishes.

``--record-layout instance`` (default): one record per instance holding what is unique to it, the
raw crop and the full mask once, and every variant's seed slices (``seed_slices`` concatenated in
variant order, ``seed_slice_counts`` one count per variant); a variant's seed mask is the target
on its slices, made by the reader. ``variant``: one record per variant, as the first versions
wrote, with ``seed_target`` and the variant's ``seed_slices`` (source and target repeated).

The protobuf classes are TensorFlow's messages declared under our own package (no TensorFlow
needed, and no clash with it); serialization is deterministic (map keys sorted), so identical
inputs give identical bytes.
"""
from __future__ import annotations

from typing import List, Sequence

import numpy as np

from synanno_datagen.transforms.records import Varied

# Contract keys first; the rest describe where the crop came from.
OPTIONAL_POINT_FEATURES = ("pre_pt_xyz", "post_pt_xyz")  # only when the table has these points
FEATURES: List[dict] = [
    {"name": "source", "kind": "bytes", "dtype": "uint8", "shape": "shape", "axes": "zyx",
     "description": "raw EM crop at the source resolution, padded with pad_value"},
    {"name": "target", "kind": "bytes", "dtype": "uint8", "shape": "shape", "axes": "zyx",
     "description": "full cleaned synapse mask, 0/1"},
    {"name": "seed_target", "kind": "bytes", "dtype": "uint8", "shape": "shape", "axes": "zyx",
     "description": "target with every slice but seed_slices zeroed, 0/1"},
    {"name": "shape", "kind": "int64", "dtype": "int64", "shape": [3], "axes": "zyx",
     "description": "array shape [z, y, x]"},
    {"name": "seed_slices", "kind": "int64", "dtype": "int64", "shape": [-1], "axes": "z",
     "description": "sorted z indices kept in seed_target"},
    {"name": "instance_id", "kind": "int64", "dtype": "int64", "shape": [], "axes": "",
     "description": "synapse id from the table"},
    {"name": "variant", "kind": "int64", "dtype": "int64", "shape": [], "axes": "",
     "description": "variant index 0..variants-1"},
    {"name": "center_xyz", "kind": "int64", "dtype": "int64", "shape": [3], "axes": "xyz",
     "description": "synapse center, target-volume voxels"},
    {"name": "pre_pt_xyz", "kind": "int64", "dtype": "int64", "shape": [3], "axes": "xyz",
     "description": "presynaptic point, target-volume voxels"},
    {"name": "post_pt_xyz", "kind": "int64", "dtype": "int64", "shape": [3], "axes": "xyz",
     "description": "postsynaptic point, target-volume voxels"},
    {"name": "target_box_xyz", "kind": "int64", "dtype": "int64", "shape": [6], "axes": "xyz",
     "description": "crop box in target voxels: start x, y, z then stop x, y, z (half-open)"},
    {"name": "source_box_xyz", "kind": "int64", "dtype": "int64", "shape": [6], "axes": "xyz",
     "description": "crop box in source voxels (at source_mip): start xyz then stop xyz"},
    {"name": "source_padding_xyz", "kind": "int64", "dtype": "int64", "shape": [6], "axes": "xyz",
     "description": "source voxels outside the volume: before x, after x, before y, ... after z"},
]


def example_pb2():
    """The tf.train.Example message classes (``.Example`` ...), TensorFlow's wire format under
    our own proto package: see transforms.example_proto."""
    from synanno_datagen.transforms.example_proto import messages

    return messages()


VARIANT_ONLY = ("seed_target", "variant")            # features of the variant layout only
INSTANCE_FEATURES: List[dict] = [
    {"name": "seed_slices", "kind": "int64", "dtype": "int64", "shape": [-1], "axes": "z",
     "description": "every variant's sorted seed z indices, concatenated in variant order"},
    {"name": "seed_slice_counts", "kind": "int64", "dtype": "int64", "shape": [-1], "axes": "",
     "description": "seed slices of each variant (one entry per variant): variant v's are "
                    "seed_slices[sum(counts[:v]):sum(counts[:v + 1])]; its seed mask is target "
                    "with every other slice zeroed"},
]


def features(point_features: Sequence[str], layout: str) -> List[dict]:
    """The features records carry: FEATURES of ``layout`` without the optional points the table
    lacks (``point_features``: those it has)."""
    kept = [f for f in FEATURES
            if f["name"] not in OPTIONAL_POINT_FEATURES or f["name"] in point_features]
    if layout == "variant":
        return kept
    kept = [f for f in kept if f["name"] not in VARIANT_ONLY + ("seed_slices",)]
    at = [f["name"] for f in kept].index("shape") + 1
    return kept[:at] + INSTANCE_FEATURES + kept[at:]


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
