"""Facts about a finished dataset, as plain JSON-ready values: pure functions of the manifest, the
index lines and the dead-letter lines (see reading/dataset.py for reading them)."""
from __future__ import annotations

from typing import Dict, List, Optional

import numpy as np

from synanno_datagen.transforms.seeds import SeedModel, seed_inclusion_probabilities

EXAMPLES_PER_REASON = 3
HISTOGRAM_BINS = 30
CONFIG_BRIEF = ("variants", "max_seed_slices", "crop_size_xyz", "source_mip", "seed", "pad_value",
                "formats", "splits", "split_by", "num_instances", "incremental",
                "fetch_strategy", "missing_chunks")
VOLUME_BRIEF = ("url", "mip", "resolution_nm_xyz", "chunk_size_xyz", "size_xyz", "dtype",
                "encoding")

REDRAW_NOTE = ("expected: the declared law for each variant; variants after the first are\n"
               "redrawn if they repeat an earlier one, which favours more slices")


def depth_of(manifest: dict) -> int:
    """Crop depth in slices (z of the arrays' shape)."""
    return int(manifest["arrays"]["shape_zyx"][0])


def _foreground_z(entry: dict, depth: int) -> List[int]:
    """An index line's foreground z indices (distinct, in the crop; ValueError otherwise).
    Index lines written before foreground_slices existed: every slice is a candidate."""
    if "foreground_slices" not in entry:
        return list(range(depth))
    z = entry["foreground_slices"]
    if not isinstance(z, list) or len(set(z)) != len(z) or \
            not all(type(i) is int and 0 <= i < depth for i in z):
        raise ValueError(f"foreground_slices of id {entry.get('instance_id')} are not distinct "
                         f"z indices of a crop of {depth} slices")
    return z


def seed_count_histogram(entries: List[dict], model: SeedModel, depth: int) -> dict:
    """Variants by number of seed slices, ``c = 1..max_seed_slices``: observed (int) and expected
    (float: each variant's P(count = c) given its instance's foreground slices, summed)."""
    m = min(model.max_seed_slices, depth)   # (no variant has more seed slices than the crop)
    observed = [0] * m
    expected = np.zeros(m, np.float64)
    for entry in entries:
        probs = model.count_probabilities(len(_foreground_z(entry, depth)))
        for slices in entry["seed_slices"]:
            observed[len(slices) - 1] += 1
            expected[: probs.size] += probs
    return {"count": list(range(1, m + 1)), "observed": observed,
            "expected": [float(v) for v in expected]}


def seed_z_histogram(entries: List[dict], model: SeedModel, depth: int) -> dict:
    """Seed slices by z index (0..depth-1) over all variants: observed (int) and expected (float:
    each variant's P(z is a seed slice) under the declared law, given its instance's foreground
    slices, summed)."""
    observed = np.zeros(depth, np.int64)
    expected = np.zeros(depth, np.float64)
    cache: Dict[tuple, np.ndarray] = {}
    for entry in entries:
        fg = tuple(_foreground_z(entry, depth))
        if fg not in cache:
            cache[fg] = seed_inclusion_probabilities(model, depth, fg)
        for slices in entry["seed_slices"]:
            observed[list(slices)] += 1
            expected += cache[fg]
    return {"z": list(range(depth)), "observed": [int(v) for v in observed],
            "expected": [float(v) for v in expected]}


def foreground_voxels(entries: List[dict]) -> List[int]:
    """Foreground voxels of each written instance's full mask, in index order."""
    return [int(e["foreground_voxels"]) for e in entries]


def describe_values(values: List[int], bins: int = HISTOGRAM_BINS) -> Optional[dict]:
    """min, median, mean, max and a histogram (``bins`` equal bins from min to max) of values."""
    if not values:
        return None
    a = np.asarray(values, np.float64)
    counts, edges = np.histogram(a, bins=bins)
    return {"min": int(a.min()), "median": float(np.median(a)), "mean": float(a.mean()),
            "max": int(a.max()),
            "histogram": {"edges": [float(e) for e in edges], "counts": [int(n) for n in counts]}}


def failures_by_reason(letters: List[dict], examples: int = EXAMPLES_PER_REASON) -> dict:
    """{reason: {"count", "examples": first few {instance_id, details, table_shard, table_row}}},
    reasons sorted by count (most first), then name."""
    grouped: Dict[str, List[dict]] = {}
    for d in letters:
        grouped.setdefault(d["reason"], []).append(d)
    keys = ("instance_id", "details", "table_shard", "table_row")
    return {reason: {"count": len(ds), "examples": [{k: d.get(k) for k in keys}
                                                    for d in ds[:examples]]}
            for reason, ds in sorted(grouped.items(), key=lambda kv: (-len(kv[1]), kv[0]))}


def consistency_problems(manifest: dict, entries: List[dict], letters: List[dict]) -> List[str]:
    """Disagreements between the manifest and the files it lists (empty when all agree)."""
    problems = []
    splits = manifest["splits"]
    listed = sum(s["instances"] for s in splits.values())
    if listed != len(entries):
        problems.append(f"splits list {listed} instances, the index has {len(entries)}")
    for name, split in splits.items():
        mine = sum(1 for e in entries if e["split"] == name)
        if mine != split["instances"]:
            problems.append(f"split {name}: manifest {split['instances']} instances, index {mine}")
    failures = sum(manifest["counts"]["failures"].values())
    if failures != len(letters):
        problems.append(f"counts.failures sum to {failures}, the dead-letter file has "
                        f"{len(letters)} lines")
    return problems


def dataset_facts(manifest: dict, entries: List[dict], letters: List[dict], *,
                  location: str, npy: Optional[dict] = None) -> dict:
    """Everything ``inspect`` reports, JSON-ready (``npy``: the dataset's npy files and bytes,
    when not the manifest's own, see Dataset.npy_totals)."""
    model = SeedModel.from_manifest(manifest["seed_model"])
    depth = depth_of(manifest)
    config = manifest["config"]
    volumes = manifest["volumes"]
    fg = foreground_voxels(entries)
    return {
        "dataset": location,
        "generator": manifest["generator"],
        "created_utc": manifest.get("run", {}).get("created_utc"),
        "config": {k: config.get(k) for k in CONFIG_BRIEF},
        "volumes": {
            **{name: {k: volumes[name].get(k) for k in VOLUME_BRIEF}
               for name in ("source", "target")},
            "scale_xyz": volumes["scale_xyz"],
        },
        "arrays": {"shape_zyx": manifest["arrays"]["shape_zyx"],
                   "resolution_nm_zyx": manifest["arrays"]["resolution_nm_zyx"]},
        "counts": {k: v for k, v in manifest["counts"].items() if k != "failures"},
        "failures": failures_by_reason(letters),
        "splits": {name: {k: s[k] for k in ("instances", "records", "shards", "bytes")}
                   for name, s in manifest["splits"].items()},
        "npy": {k: (npy or manifest.get("npy", {})).get(k, 0) for k in ("files", "bytes")},
        "index": {
            "instances": len(entries),
            "variants": sum(len(e["seed_slices"]) for e in entries),
            "seed_count": seed_count_histogram(entries, model, depth),
            "seed_z": seed_z_histogram(entries, model, depth),
            "foreground_voxels": describe_values(fg),
        },
        "seed_model": manifest["seed_model"],
        "problems": consistency_problems(manifest, entries, letters),
    }
