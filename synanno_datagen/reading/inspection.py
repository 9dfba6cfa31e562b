"""``synanno-datagen inspect``: a readable (or ``--json``) summary of a finished dataset, and
optional plots. Reads only the manifest, the index shards and the dead-letter file."""
from __future__ import annotations

import json

from synanno_datagen.errors import UsageError
from synanno_datagen.layout import TFRECORD
from synanno_datagen.reading.dataset import damage_named, open_dataset
from synanno_datagen.reading.stats import REDRAW_NOTE, dataset_facts

COUNT_ORDER = ("rows_read", "rows_rejected", "rows_not_selected", "instances_selected",
               "instances_written", "failed", "variants_written")


def inspect_dataset(output_dir: str) -> dict:
    """The facts of the dataset in ``output_dir`` (see reading.stats.dataset_facts);
    DatasetError when its manifest lacks or garbles a part they need."""
    dataset = open_dataset(output_dir)
    with damage_named(dataset.manifest_path, "inspect"):
        return dataset_facts(dataset.manifest, dataset.iter_index(), dataset.iter_dead_letters(),
                             location=dataset.manifest_path, npy=dataset.npy_totals())


def remembered_line(counts: dict):
    """The line naming the remembered failures a run skipped (incremental runs), or None."""
    remembered = counts.get("remembered_failures") or {}
    if not remembered:
        return None
    return ("remembered failures, not tried again (--retry-failed tries them): "
            + ", ".join(f"{r} {n}" for r, n in remembered.items()))


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def _xyz(values) -> str:
    return "x".join(str(v) for v in values)


def format_facts(facts: dict) -> str:
    """The facts as a short human report (one fact per line, grouped)."""
    c, counts, index = facts["config"], facts["counts"], facts["index"]
    lines = [f"dataset   {facts['dataset']}",
             f"generator {facts['generator']['name']} {facts['generator']['version']}, "
             f"created {facts['created_utc']}",
             f"config    {c['variants']} variants, <= {c['max_seed_slices']} seed slices, crop "
             f"{_xyz(c['crop_size_xyz'])} target voxels, seed {c['seed']}, "
             f"formats {','.join(c['formats'])}, splits "
             + ",".join(f"{k}={v}" for k, v in c["splits"].items())]
    for name in ("source", "target"):
        v = facts["volumes"][name]
        lines.append(f"{name:<9} {v['url']} mip {v['mip']}, {_xyz(v['resolution_nm_xyz'])} nm, "
                     f"chunks {_xyz(v['chunk_size_xyz'])}, {v['dtype']} {v['encoding']}")
    arrays = facts["arrays"]
    lines.append(f"arrays    {_xyz(arrays['shape_zyx'])} (z, y, x) at "
                 f"{_xyz(arrays['resolution_nm_zyx'])} nm, scale xyz "
                 f"{_xyz(facts['volumes']['scale_xyz'])}")
    order = [k for k in COUNT_ORDER if k in counts] + sorted(
        k for k in counts if k not in COUNT_ORDER and not isinstance(counts[k], dict))
    lines.append("counts    " + ", ".join(f"{k} {counts[k]}" for k in order))
    filled = counts.get("filled_chunks") or {}
    if any(filled.values()):
        lines.append("chunks read as zeros (absent from storage): " + ", ".join(
            f"{volume} {n} chunks" for volume, n in filled.items()))
    lines.append(f"failures  {sum(f['count'] for f in facts['failures'].values()) or 'none'}")
    for reason, f in facts["failures"].items():
        lines.append(f"  {reason} {f['count']}")
        for ex in f["examples"]:
            where = f"row {ex['table_row']}" if ex["table_row"] is not None else "no row"
            which = f"id {ex['instance_id']}" if ex["instance_id"] is not None else "no id"
            lines.append(f"    {which} ({where}): {ex['details']}")
    if remembered_line(counts):
        lines.append(remembered_line(counts))
    asked = c.get("splits") or {}
    total = sum(s["instances"] for s in facts["splits"].values())
    lines.append("splits" + (" (by work block: the fractions asked are met over blocks, so a "
                             "small run strays from them)" if c.get("split_by") == "block"
                             else ""))
    for name, s in facts["splits"].items():
        share = f"; {100 * s['instances'] / total:.0f}% of instances" if total else ""
        if share and name in asked:
            share += f" (asked {100 * asked[name]:.0f}%)"
        if TFRECORD in c["formats"]:
            lines.append(f"  {name:<6} {s['instances']} instances, {s['records']} records, "
                         f"{s['shards']} shards, {_mb(s['bytes'])}{share}")
        else:  # the shards are index shards; the arrays are the npy files below
            lines.append(f"  {name:<6} {s['instances']} instances, {s['shards']} index "
                         f"shards{share}")
    npy = facts.get("npy") or {}
    if npy.get("files"):
        lines.append(f"npy       {npy['files']} files, {_mb(npy['bytes'])}")
    seeds = index["seed_count"]
    lines.append("seed slices per variant  " + ", ".join(
        f"{c}: {o} (expected {e:.0f})"
        for c, o, e in zip(seeds["count"], seeds["observed"], seeds["expected"])))
    z = index["seed_z"]
    lines.append("seed slices by z         " + " ".join(str(o) for o in z["observed"]))
    lines.append("  expected               " + " ".join(f"{e:.0f}" for e in z["expected"]))
    if c["variants"] > 1:
        lines.append("  (" + REDRAW_NOTE.replace("\n", " ") + ")")
    repeated = index.get("repeated_variants") or {}
    if repeated.get("variants"):
        n = repeated["instances"]
        lines.append(f"variants repeating an earlier one's seed slices  {repeated['variants']} "
                     f"(of {n} instance{'s' if n != 1 else ''} whose foreground slices allow "
                     "fewer distinct sets than variants): identical training samples")
    fg = index["foreground_voxels"]
    if fg:
        lines.append(f"foreground voxels per instance  min {fg['min']}, median "
                     f"{fg['median']:.0f}, mean {fg['mean']:.0f}, max {fg['max']}")
    lines.append("checks    " + ("; ".join(facts["problems"]) or
                                 "manifest, index and dead letters agree"))
    return "\n".join(lines)


def run_inspect(output_dir: str, as_json: bool = False, plots_dir: str = None) -> str:
    """What ``inspect`` prints; writes the plots when ``plots_dir`` is given (their paths are
    listed, under ``plots`` in the JSON)."""
    facts = inspect_dataset(output_dir)
    with damage_named(facts["dataset"], "inspect"):   # the config's parts the facts only copy
        text = format_facts(facts)   # (with --json too: the same manifests are refused)
        paths = []
        if plots_dir:
            from synanno_datagen.reading.plots import write_plots

            paths = write_plots(facts, plots_dir)
    if as_json:
        return json.dumps({**facts, "plots": paths}, indent=2, sort_keys=True)
    return "\n".join([text] + [f"plot      {p}" for p in paths])
