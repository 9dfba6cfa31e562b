"""tf.train.Example encoding of one variant, and the feature spec the manifest publishes.

Protobuf classes come from the ``tfrecord`` package (no TensorFlow needed); serialization is
deterministic (map keys sorted), so identical inputs give identical bytes.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
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
    """The ``tf.train.Example`` protobuf classes of the ``tfrecord`` package (no TensorFlow).

    The package's ``__init__`` also imports PyTorch when it is installed (1-2 s and about 200 MB
    in every process that only writes records), so unless torch is already loaded, its import is
    refused while the package loads; ``tfrecord.torch`` still imports normally afterwards.
    """
    module = sys.modules.get("tfrecord.example_pb2")
    if module is not None:
        return module
    if "torch" in sys.modules or importlib.util.find_spec("torch") is None:
        return importlib.import_module("tfrecord.example_pb2")
    sys.modules["torch"] = None  # makes `import torch` raise ImportError, which tfrecord catches
    try:
        return importlib.import_module("tfrecord.example_pb2")
    finally:
        if sys.modules.get("torch", 0) is None:
            del sys.modules["torch"]


def features(point_features: Sequence[str] = OPTIONAL_POINT_FEATURES) -> List[dict]:
    """FEATURES without the optional points the table lacks (``point_features``: those it has)."""
    return [f for f in FEATURES
            if f["name"] not in OPTIONAL_POINT_FEATURES or f["name"] in point_features]


def encode_example(varied: Varied, variant: int, seed_zyx: np.ndarray) -> bytes:
    """Serialized tf.train.Example for one variant of one instance (keys sorted, so the order
    of the ``put`` calls does not change the bytes)."""
    inst = varied.instance
    example = example_pb2().Example()
    feature = example.features.feature

    def put_bytes(name, array):
        feature[name].bytes_list.value.append(np.ascontiguousarray(array, np.uint8).tobytes())

    def put_ints(name, values):
        feature[name].int64_list.value.extend(int(v) for v in values)

    put_bytes("source", varied.source_zyx)
    put_bytes("target", varied.target_zyx)
    put_bytes("seed_target", seed_zyx)
    put_ints("shape", varied.source_zyx.shape)
    put_ints("seed_slices", varied.seed_slices[variant])
    put_ints("instance_id", [inst.instance_id])
    put_ints("variant", [variant])
    put_ints("center_xyz", inst.center_xyz)
    for name in OPTIONAL_POINT_FEATURES:
        if getattr(inst, name) is not None:
            put_ints(name, getattr(inst, name))
    put_ints("target_box_xyz", varied.target_box.start_xyz + varied.target_box.stop_xyz)
    put_ints("source_box_xyz", varied.source_box.start_xyz + varied.source_box.stop_xyz)
    put_ints("source_padding_xyz", [v for pair in varied.source_padding_xyz for v in pair])
    return example.SerializeToString(deterministic=True)
