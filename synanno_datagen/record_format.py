"""The record contract both sides share: the features a TFRecord record carries in either record
layout (what the manifest's ``features`` lists), the tf.train.Example messages, and a variant's
seed mask. The generator (transforms.examples) writes it and the readers (synanno_datagen.reading)
read it; neither needs the other's modules, nor Beam or TensorFlow.

The protobuf classes are TensorFlow's messages declared under our own package (no TensorFlow
needed, and no clash with it): see synanno_datagen.example_proto.
"""
from __future__ import annotations

from typing import List, Sequence

import numpy as np

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
    our own proto package: see synanno_datagen.example_proto."""
    from synanno_datagen.example_proto import messages

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


def seed_mask(target_zyx: np.ndarray, slices: Sequence[int]) -> np.ndarray:
    """Copy of the (z, y, x) uint8 target with every slice but ``slices`` zeroed: a variant's
    seed mask (``seed_target``)."""
    out = np.zeros_like(target_zyx)
    index = list(slices)
    out[index] = target_zyx[index]
    return out
