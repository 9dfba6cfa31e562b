"""The human summary of a finished run that ``run`` and ``demo`` print before the closing line."""
from __future__ import annotations

from synanno_datagen.layout import DEAD_LETTER, TFRECORD
from synanno_datagen.pipeline.table_resolution import nm_text


def summary(manifest: dict, output_dir: str) -> str:
    """A short human summary of a finished run."""
    counts = manifest["counts"]
    incremental = manifest.get("incremental")
    lines = [
        f"rows read {counts['rows_read']}, instances selected {counts['instances_selected']}, "
        f"written {counts['instances_written']}, variants {counts['variants_written']}",
    ]
    requested = manifest["config"].get("num_instances")
    held = incremental.get("instances_before", 0) if incremental else 0
    usable = held + counts["instances_selected"]
    if requested is not None and usable < requested:
        lines.append(f"warning: --num-instances {requested} is more than the "
                     f"{usable} usable instances in the table; took them all")
    if incremental and incremental.get("replaces"):
        lines.append(f"new dataset: the generation config differs from "
                     f"{incremental['replaces']}'s, so {incremental['run_dir']} starts a fresh "
                     "one (LATEST points at it; earlier runs stay)")
    if incremental and counts["instances_written"] == 0:
        full = requested is not None and held >= requested
        tried = counts["instances_selected"]
        lines.append(f"nothing new: {incremental['run_dir']} adds no instance (" + (
            f"the {tried} tried all failed: see failures)" if tried else
            f"the dataset holds {held}, --num-instances {requested})" if full else
            "every usable row of the table is in the dataset or remembered as failed)"))
    failures = counts["failures"]
    lines.append("failures: " + (", ".join(f"{r} {n}" for r, n in failures.items()) or "none"))
    if not incremental and counts["instances_written"] == 0 and counts["rows_read"]:
        lines.append(f"warning: no instance written from {counts['rows_read']} rows (see "
                     f"failures; {output_dir.rstrip('/')}/{DEAD_LETTER} says why, row by row)")
    outside = failures.get("outside_volume", 0)
    given = manifest["config"].get("coordinate_resolution_nm_xyz")
    nm = nm_text(given) if given else ""
    from_table = manifest.get("table", {}).get("coordinate_resolution_from")
    if from_table:
        lines.append(f"coordinates: {nm} nm per table unit, as the table's pandas attrs "
                     "declare (dataframe_resolution)")
    if not given:
        advice = ("if the table's coordinates are not in target voxels (nm, say), pass "
                  "--coordinate-resolution X Y Z (the table's units in nm)")
    elif from_table:
        advice = (f"check the table's dataframe_resolution {nm} (its pandas attrs), and "
                  "that the table's points are in this volume")
    else:
        advice = (f"check --coordinate-resolution {nm} (the table's units in nm), and that "
                  "the table's points are in this volume")
    target = manifest.get("volumes", {}).get("target", {})
    offset = target.get("voxel_offset_xyz")
    if offset and any(offset):
        units = "target voxels"
        if given and target.get("resolution_nm_xyz"):   # the offset in the table's units
            offset = [o * r / g for o, r, g in zip(offset, target["resolution_nm_xyz"], given)]
            units = "the table's units"
        advice += ("; points are absolute, not relative to the volume's corner: add the "
                   f"target's voxel_offset ({' '.join(f'{v:g}' for v in offset)} in "
                   f"{units}) to those that are")
    off_label, written = counts.get("centers_off_label", 0), counts["instances_written"]
    if off_label and 2 * off_label >= written:   # a synapse table's centres lie on synapses
        lines.append(f"warning: {off_label} of {written} instances written have their centre "
                     "on no synapse label, each crop's mask the synapse nearest it (index key "
                     f"center_distance_nm): {advice}")
    if outside and outside >= 0.9 * counts["rows_read"]:
        lines.append(f"warning: {outside} of {counts['rows_read']} rows are outside the volume: "
                     + advice)
    from synanno_datagen.reading.inspection import remembered_line

    if remembered_line(counts):
        lines.append(remembered_line(counts))
    tfrecord = TFRECORD in manifest["config"]["formats"]
    for name, split in manifest["splits"].items():
        lines.append(f"split {name}: {split['instances']} instances, " + (
            f"{split['records']} records in {split['shards']} shards" if tfrecord else
            f"{split['shards']} index shards"))   # npy only: the shards are the index's
    lines.append(f"manifest: {output_dir.rstrip('/')}/manifest.json")
    return "\n".join(lines)
