"""Facts about a finished dataset, as plain JSON-ready values: pure functions of the manifest, the
index lines and the dead-letter lines (see reading/dataset.py for reading them)."""
from __future__ import annotations

import array
from typing import Dict, Iterable, List, Optional, Sequence

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


class IndexTally:
    """What inspect reports of the index lines, added up line by line (``add``), so that no
    step holds every line: seed slices by count and by z (observed, and expected under the
    declared law given each instance's foreground slices), foreground voxels, instances by
    split."""

    def __init__(self, model: SeedModel, depth: int):
        self.model, self.depth = model, depth
        self.m = min(model.max_seed_slices, depth)   # (no variant has more seed slices)
        self.count_observed = [0] * self.m
        self.z_observed = [0] * depth
        self.foreground = array.array("q")
        self.instances, self.variants = 0, 0
        self.repeats = {"variants": 0, "instances": 0}   # variants repeating an earlier set
        self.by_split: Dict[str, int] = {}
        # variants by their instance's foreground slices: what the expected curves are
        # made of, summed once at the end (per line, the numpy sums took 70% of inspect)
        self._variants_by_foreground: Dict[tuple, int] = {}

    def add(self, entry: dict) -> None:
        fg = tuple(_foreground_z(entry, self.depth))
        variants = entry["seed_slices"]
        count_observed, z_observed = self.count_observed, self.z_observed
        for slices in variants:
            count_observed[len(slices) - 1] += 1
            for z in slices:
                z_observed[z] += 1
        by_foreground = self._variants_by_foreground
        by_foreground[fg] = by_foreground.get(fg, 0) + len(variants)
        self.foreground.append(int(entry["foreground_voxels"]))
        repeats = len(variants) - len({tuple(s) for s in variants})
        if repeats:   # (its foreground allows fewer distinct sets than variants)
            self.repeats["variants"] += repeats
            self.repeats["instances"] += 1
        self.instances += 1
        self.variants += len(variants)
        self.by_split[entry["split"]] = self.by_split.get(entry["split"], 0) + 1

    def seed_count(self) -> dict:
        """Variants by number of seed slices, ``c = 1..max_seed_slices``."""
        expected = np.zeros(self.m, np.float64)
        for fg, n in self._variants_by_foreground.items():
            counts = self.model.count_probabilities(len(fg))
            expected[: counts.size] += n * counts
        return {"count": list(range(1, self.m + 1)), "observed": list(self.count_observed),
                "expected": [float(v) for v in expected]}

    def seed_z(self) -> dict:
        """Seed slices by z index (0..depth-1) over all variants."""
        expected = np.zeros(self.depth, np.float64)
        for fg, n in self._variants_by_foreground.items():
            expected += n * seed_inclusion_probabilities(self.model, self.depth, fg)
        return {"z": list(range(self.depth)), "observed": list(self.z_observed),
                "expected": [float(v) for v in expected]}


def tally_index(entries: Iterable[dict], model: SeedModel, depth: int) -> IndexTally:
    """The IndexTally of ``entries`` (read once)."""
    tally = IndexTally(model, depth)
    for entry in entries:
        tally.add(entry)
    return tally


def describe_values(values: Sequence[int], bins: int = HISTOGRAM_BINS) -> Optional[dict]:
    """min, median, mean, max and a histogram (``bins`` equal bins from min to max) of values."""
    if not len(values):
        return None
    a = np.asarray(values, np.float64)
    counts, edges = np.histogram(a, bins=bins)
    return {"min": int(a.min()), "median": float(np.median(a)), "mean": float(a.mean()),
            "max": int(a.max()),
            "histogram": {"edges": [float(e) for e in edges], "counts": [int(n) for n in counts]}}


def failures_by_reason(letters: Iterable[dict], examples: int = EXAMPLES_PER_REASON) -> dict:
    """{reason: {"count", "examples": first few {instance_id, details, table_shard, table_row}}},
    reasons sorted by count (most first), then name; the letters read once, streaming."""
    counts: Dict[str, int] = {}
    shown: Dict[str, List[dict]] = {}
    keys = ("instance_id", "details", "table_shard", "table_row")
    for d in letters:
        reason = d["reason"]
        counts[reason] = counts.get(reason, 0) + 1
        if counts[reason] <= examples:
            shown.setdefault(reason, []).append({k: d.get(k) for k in keys})
    return {reason: {"count": n, "examples": shown[reason]}
            for reason, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))}


def consistency_problems(manifest: dict, by_split: Dict[str, int], letters: int) -> List[str]:
    """Disagreements between the manifest and the files it lists (empty when all agree):
    ``by_split``, the index lines by split; ``letters``, the dead-letter lines."""
    problems = []
    splits = manifest["splits"]
    listed = sum(s["instances"] for s in splits.values())
    indexed = sum(by_split.values())
    if listed != indexed:
        problems.append(f"splits list {listed} instances, the index has {indexed}")
    for name, split in splits.items():
        mine = by_split.get(name, 0)
        if mine != split["instances"]:
            problems.append(f"split {name}: manifest {split['instances']} instances, index {mine}")
    failures = sum(manifest["counts"]["failures"].values())
    if failures != letters:
        problems.append(f"counts.failures sum to {failures}, the dead-letter file has "
                        f"{letters} lines")
    return problems


def dataset_facts(manifest: dict, entries: Iterable[dict], letters: Iterable[dict], *,
                  location: str, npy: Optional[dict] = None) -> dict:
    """Everything ``inspect`` reports, JSON-ready (``npy``: the dataset's npy files and bytes,
    when not the manifest's own, see Dataset.npy_totals). ``entries`` and ``letters`` are
    read once, in order: iterators that stream the files keep memory bounded."""
    model = SeedModel.from_manifest(manifest["seed_model"])
    index = tally_index(entries, model, depth_of(manifest))
    letter_count = [0]

    def counted(lines):
        for line in lines:
            letter_count[0] += 1
            yield line

    failures = failures_by_reason(counted(letters))
    config = manifest["config"]
    volumes = manifest["volumes"]
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
        "failures": failures,
        "splits": {name: {k: s[k] for k in ("instances", "records", "shards", "bytes")}
                   for name, s in manifest["splits"].items()},
        "npy": {k: (npy or manifest.get("npy", {})).get(k, 0) for k in ("files", "bytes")},
        "index": {
            "instances": index.instances,
            "variants": index.variants,
            "seed_count": index.seed_count(),
            "seed_z": index.seed_z(),
            "foreground_voxels": describe_values(index.foreground),
            "repeated_variants": index.repeats,
        },
        "seed_model": manifest["seed_model"],
        "problems": consistency_problems(manifest, index.by_split, letter_count[0]),
    }
