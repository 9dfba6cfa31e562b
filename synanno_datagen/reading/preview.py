"""``synanno-datagen preview``: a PNG montage of sampled records, one row per record.

Each row shows z-slices of the raw EM crop in grey, the full target mask outlined in cyan on every
slice, and the seed slices filled in magenta with a magenta frame; the row is labelled with the
instance id, variant, split and seed slices. Records are read from the TFRecord shards with the
package's record decoder (no TensorFlow); which records is a pure function of ``--seed``.
"""
from __future__ import annotations

import bisect
import itertools
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np

from synanno_datagen.errors import DatasetError, UsageError
from synanno_datagen.layout import TFRECORD, records_info
from synanno_datagen.reading.dataset import (
    DAMAGED, Dataset, damage_named, open_dataset, write_view,
)
from synanno_datagen.reading.records import read_records

TARGET_RGB = (0, 230, 255)      # cyan outline: the full target mask
SEED_RGB = (255, 0, 200)        # magenta fill and frame: seed slices
SEED_ALPHA = 0.45
FRAME_PX = 3
GAP_PX = 4
STRIP_PX = 14                   # above each row of tiles: the z index of every tile
LABEL_PX = 170                  # left of each row: id, variant, split, seeds
LABEL_LINES_PX = 60             # the height of those four lines: the least a row's tiles take
TILE_PX = 128                   # crops larger than this in y or x are shown scaled down
HEADER_PX = 30                  # the colour legend, two lines
DPI = 100
LEGEND = ("cyan outline: full target mask (on grey raw EM)\n"
          "magenta fill + frame: seed slices (kept in the input)")
DECODED = ("source", "target", "instance_id", "variant")


def select_records(index_files: Sequence[dict], n: int, seed: int, split: Optional[str] = None,
                   lines_of: Callable[[dict], List[dict]] = None) -> List[dict]:
    """Pick ``n`` (instance, variant) pairs: instances without repeats, then one variant each,
    from ``np.random.default_rng(seed)``: places among the instances of the index shards
    ``index_files`` (manifest entries, in order; of one split if given), each shard's counted
    by its entry's ``records``, then a variant of each chosen line, in that order.

    ``lines_of(index file entry)``: the lines of an index shard, read only for the shards of
    the chosen places, one shard's held at a time (and for an entry that lists no ``records``,
    an early version's, to count them): preview reads a few shards of a dataset of any size.

    Returns dicts {instance_id, variant, split, index_file, line, variants_before, seed_slices,
    foreground_slices, npy} (``line``: the instance's place in its index shard, and so its
    record's in an instance-layout shard; ``variants_before``: the variants of the lines before
    it, and so the place of its first record in a variant-layout shard), sorted by instance id.
    Fewer than ``n`` when the dataset (or split) holds fewer instances.
    """
    files = [f for f in index_files if split is None or f["split"] == split]
    counts = [f["records"] if "records" in f else len(lines_of(f)) for f in files]
    ends = list(itertools.accumulate(counts))
    total = ends[-1] if ends else 0
    rng = np.random.default_rng(seed)
    out, held = [], (None, [])   # (shard number, its lines): one shard's lines at a time
    for place in sorted(rng.choice(total, size=min(n, total), replace=False)):
        number = bisect.bisect_right(ends, place)
        line = int(place) - (ends[number] - counts[number])
        if held[0] != number:
            held = (number, lines_of(files[number]))
        entries = held[1]
        entry = entries[line]
        variant = int(rng.integers(len(entry["seed_slices"])))
        out.append({"instance_id": entry["instance_id"], "variant": variant,
                    "split": entry["split"], "index_file": files[number], "line": line,
                    "variants_before": _variants_before(entries)[line],
                    "seed_slices": list(entry["seed_slices"][variant]),
                    "foreground_slices": entry.get("foreground_slices"),
                    "npy": entry.get("npy")})
    return sorted(out, key=lambda c: c["instance_id"])


def _variants_before(entries: List[dict]) -> List[int]:
    """For each index line, the variants of the lines before it."""
    counts = [len(e["seed_slices"]) for e in entries]
    return list(itertools.accumulate([0] + counts[:-1]))


def read_selected(dataset: Dataset, chosen: List[dict]) -> List[dict]:
    """The chosen records with their arrays: adds ``source`` and ``target`` (uint8, z, y, x).
    Each is read at its place in its shard (the records before it seeked over, in an
    uncompressed shard; none after it read): its index line's, or in the variant layout (a
    record per variant, in variant order) the variants before it plus its variant. A dataset
    without TFRecord shards: from the instance's npy files, checked against its index line."""
    if TFRECORD not in dataset.formats:
        found = []
        for c in chosen:
            items = dataset.npy_lines_items([(c["index_file"], [
                {"instance_id": c["instance_id"], "npy": c["npy"]}])])
            if c["variant"] >= len(items):
                raise DatasetError(f"{dataset.path(c['index_file']['path'])}: the line of "
                                   f"instance {c['instance_id']} lists {len(items)} npy seed "
                                   f"masks, none for its variant {c['variant']}; {DAMAGED}")
            source, _, target = items.files[c["variant"]]
            found.append({**c, "source": dataset.npy_array(items, int(source)),
                          "target": dataset.npy_array(items, int(target))})
        return found
    shards = [dataset.tfrecord_for(c["index_file"]) for c in chosen]
    dataset.checked_files(list({s["path"]: s for s in shards}.values()))
    variant_records = records_info(dataset.manifest)["layout"] == "variant"
    found = []
    for c, shard in zip(chosen, shards):
        place = c["variants_before"] + c["variant"] if variant_records else c["line"]
        record = next(read_records(dataset, shard, DECODED, skip=place), None)
        if record is None or record["instance_id"] != c["instance_id"] or \
                record.get("variant", c["variant"]) != c["variant"]:
            raise DatasetError(f"{dataset.root}: record {(c['instance_id'], c['variant'])} is "
                               f"in the index but not in its place in {shard['path']}; "
                               f"{DAMAGED}")
        found.append({**c, "source": record["source"], "target": record["target"]})
    return found


def choose_slices(depth: int, foreground_z: Sequence[int], seed_z: Sequence[int],
                  max_slices: int) -> List[int]:
    """z indices to show: all when ``depth <= max_slices``; else ``max_slices`` consecutive
    slices centred on the foreground (on the seeds if the foreground is taller), in the crop."""
    if depth <= max_slices:
        return list(range(depth))
    around = list(foreground_z) or list(seed_z)
    if around[-1] - around[0] + 1 > max_slices:
        around = list(seed_z)
    centre = (around[0] + around[-1]) / 2.0
    start = int(np.clip(round(centre - (max_slices - 1) / 2.0), 0, depth - max_slices))
    return list(range(start, start + max_slices))


def outline(mask_yx: np.ndarray) -> np.ndarray:
    """bool (y, x): mask pixels with a 4-neighbour outside the mask (the border of ``mask_yx``)."""
    m = np.asarray(mask_yx, bool)
    inner = np.zeros_like(m)
    inner[1:-1, 1:-1] = m[1:-1, 1:-1] & m[:-2, 1:-1] & m[2:, 1:-1] & m[1:-1, :-2] & m[1:-1, 2:]
    return m & ~inner


def tile_rgb(source_yx: np.ndarray, target_yx: np.ndarray, is_seed: bool) -> np.ndarray:
    """uint8 (y, x, 3): grey raw, seed mask filled (seed slices), target outlined, seed frame."""
    rgb = np.repeat(source_yx[..., None], 3, axis=2).astype(np.float32)
    mask = target_yx.astype(bool)
    if is_seed:
        rgb[mask] = (1 - SEED_ALPHA) * rgb[mask] + SEED_ALPHA * np.asarray(SEED_RGB, np.float32)
    rgb[outline(mask)] = TARGET_RGB
    if is_seed:
        for edge in (np.s_[:FRAME_PX, :], np.s_[-FRAME_PX:, :], np.s_[:, :FRAME_PX],
                     np.s_[:, -FRAME_PX:]):
            rgb[edge] = SEED_RGB
    return np.round(rgb).astype(np.uint8)


def montage_size(shape_zyx: Sequence[int], rows: int, max_slices: int, tile_px: int = TILE_PX
                 ) -> Tuple[int, int, int, int]:
    """(canvas height, canvas width, tile height, tile width) in pixels of ``rows`` rows of crops
    of ``shape_zyx``: tiles are the crop's (y, x) scaled down to at most ``tile_px``, at most
    ``max_slices`` of them per row."""
    depth, ny, nx = shape_zyx
    scale = min(1.0, tile_px / max(ny, nx))
    th, tw = max(1, round(ny * scale)), max(1, round(nx * scale))
    return (HEADER_PX + rows * _row_px(th), LABEL_PX + min(depth, max_slices) * (tw + GAP_PX),
            th, tw)


def _row_px(tile_height: int) -> int:
    """A row's height in pixels: the z labels, its tiles or its label's lines, a gap."""
    return STRIP_PX + max(tile_height, LABEL_LINES_PX) + GAP_PX


def compose_montage(records: List[dict], max_slices: int, tile_px: int = TILE_PX
                    ) -> Tuple[np.ndarray, List[dict]]:
    """uint8 (height, width, 3) canvas of all rows, and per row the text labels to draw:
    {"row_top", "z": [(x_centre, z, is_seed)], "lines": [...]}. Tiles are the crop's (y, x)
    scaled down (nearest pixel) to at most ``tile_px``; the canvas height is
    ``HEADER_PX + n * (STRIP_PX + max(tile height, LABEL_LINES_PX) + GAP_PX)``."""
    depth, ny, nx = records[0]["source"].shape
    height, width, th, tw = montage_size((depth, ny, nx), len(records), max_slices, tile_px)
    rows_yx = np.ix_((np.arange(th) * ny) // th, (np.arange(tw) * nx) // tw)  # nearest pixels
    row_px = _row_px(th)
    canvas = np.full((height, width, 3), 255, np.uint8)
    labels = []
    for i, r in enumerate(records):
        fg = r["foreground_slices"]
        if fg is None:
            fg = np.flatnonzero(r["target"].reshape(depth, -1).any(axis=1)).tolist()
        zs = choose_slices(depth, fg, r["seed_slices"], max_slices)
        top = HEADER_PX + i * row_px + STRIP_PX
        z_labels = []
        for j, z in enumerate(zs):
            left = LABEL_PX + j * (tw + GAP_PX)
            seed = z in r["seed_slices"]
            canvas[top:top + th, left:left + tw] = tile_rgb(
                r["source"][z][rows_yx], r["target"][z][rows_yx], seed)
            z_labels.append((left + tw / 2.0, z, seed))
        seeds = ", ".join(map(str, r["seed_slices"]))
        shown = f"z {zs[0]}-{zs[-1]} of 0-{depth - 1}" if len(zs) < depth else f"all {depth} z"
        labels.append({"row_top": top, "z": z_labels, "lines": [
            f"id {r['instance_id']}", f"variant {r['variant']}, {r['split']}",
            f"seed z: {seeds}", f"shown: {shown}"]})
    return canvas, labels


def render_png(canvas: np.ndarray, labels: List[dict], colours: int = 0) -> bytes:
    """The canvas at one pixel per canvas pixel with the labels drawn, as PNG bytes (RGB, or a
    palette of ``colours`` colours when > 0). No metadata, so the bytes are deterministic."""
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from PIL import Image

    h, w = canvas.shape[:2]
    fig = Figure(figsize=(w / DPI, h / DPI), dpi=DPI)   # the text alone, on a clear background
    fig.patch.set_alpha(0)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, w)
    ax.set_ylim(h, 0)
    ax.axis("off")
    for row in labels:
        for x, z, seed in row["z"]:
            ax.text(x, row["row_top"] - 2, f"z{z}" + (" seed" if seed else ""), ha="center",
                    va="bottom", fontsize=7, color=np.asarray(SEED_RGB) / 255 if seed else "k",
                    fontweight="bold" if seed else "normal")
        ax.text(6, row["row_top"] + 2, "\n".join(row["lines"]), ha="left", va="top",
                fontsize=8, family="monospace", linespacing=1.4)
    ax.text(6, 3, LEGEND, ha="left", va="top", fontsize=8, linespacing=1.3)
    agg = FigureCanvasAgg(fig)
    agg.draw()
    text = np.asarray(agg.buffer_rgba())
    drawn = text[..., 3] > 0    # the text's pixels, over the canvas (not the canvas through
    alpha = text[..., 3][drawn, None] / 255.0   # matplotlib's image path: 30x its bytes)
    rgb = canvas.copy()
    rgb[drawn] = np.round((1 - alpha) * canvas[drawn] + alpha * text[..., :3][drawn])
    buffer = io.BytesIO()
    image = Image.fromarray(rgb)
    if colours:   # a palette image: about a third of the bytes, visually the same
        image = image.quantize(colours, method=Image.Quantize.MEDIANCUT)
    image.save(buffer, format="png", compress_level=6)   # (optimize: 0.9x the bytes, 4x the time)
    return buffer.getvalue()


def _check_size(shape_zyx: Sequence[int], n: int, max_slices: int, tile_px: int) -> None:
    """UsageError for a montage of more pixels than Pillow opens without a warning (a
    decompression bomb to it, and about 1 GB of memory here), naming the rows that fit."""
    from PIL import Image

    height, width, th, _ = montage_size(shape_zyx, n, max_slices, tile_px)
    if height * width > Image.MAX_IMAGE_PIXELS:
        rows = max(0, (Image.MAX_IMAGE_PIXELS // width - HEADER_PX) // _row_px(th))
        raise UsageError(f"--n {n}: a montage of {width} x {height} pixels, more than an image "
                         f"viewer opens ({Image.MAX_IMAGE_PIXELS:,} pixels); ask for at most "
                         f"{rows} rows, or pass a smaller --tile-px or --max-slices")


def run_preview(output_dir: str, out: str, n: int = 8, seed: int = 0,
                split: Optional[str] = None, max_slices: int = 16,
                tile_px: Optional[int] = None, colours: int = 0) -> List[dict]:
    """Write the montage of ``n`` sampled records to ``out`` (local or gs://); return the
    chosen records' {instance_id, variant, split, seed_slices}. ``tile_px`` None: TILE_PX."""
    tile_px = TILE_PX if tile_px is None else tile_px
    for flag, value, low in (("--n", n, 1), ("--max-slices", max_slices, 1),
                             ("--tile-px", tile_px, 8), ("--colours", colours, 0),
                             ("--seed", seed, 0)):
        if value < low:
            raise UsageError(f"{flag} {value}: must be at least {low}")
    if colours > 256:
        raise UsageError(f"--colours {colours}: a PNG palette holds at most 256")
    if not str(out).lower().endswith(".png"):
        raise UsageError(f"--out {out}: preview writes a PNG; name it .png")
    dataset = open_dataset(output_dir)
    splits = dataset.manifest["splits"]
    if split is not None and split not in splits:
        raise UsageError(f"--split {split}: no such split (the dataset has {', '.join(splits)})")
    _check_size(dataset.manifest["arrays"]["shape_zyx"], n, max_slices, tile_px)
    with damage_named(dataset.manifest_path, "preview"):
        chosen = select_records(dataset.files("index"), n, seed, split, dataset.index_lines)
        if not chosen:
            raise DatasetError(f"{output_dir}: no written instances to preview"
                               + (f" in split {split}" if split else ""))
        canvas, labels = compose_montage(read_selected(dataset, chosen), max_slices, tile_px)
    write_view("--out", out, render_png(canvas, labels, colours))
    return [{k: c[k] for k in ("instance_id", "variant", "split", "seed_slices")}
            for c in chosen]
