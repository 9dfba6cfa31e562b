"""``preview``: record choice, the montage's pixels and the PNG, on a real generated dataset."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from synanno_datagen.cli import main
from synanno_datagen.errors import UsageError
from synanno_datagen.reading.dataset import Dataset, open_dataset
from synanno_datagen.reading.preview import (
    FRAME_PX, GAP_PX, HEADER_PX, LABEL_LINES_PX, LABEL_PX, SEED_ALPHA, SEED_RGB, STRIP_PX,
    TARGET_RGB, choose_slices, compose_montage, montage_size, outline, read_selected,
    render_png, select_records,
)
from tests.conftest import GOOD_IDS, assert_usage_error, rewrite_listed
from tests.test_pipeline import read_records, run_pipeline


def _shards(n_instances=20, variants=4, splits=("train", "val")):
    """Index shard entries (one per split, listing their lines' count) and their lines."""
    entries = [{"instance_id": 1000 - 7 * i, "split": splits[i % len(splits)],
                "seed_slices": [[v % 4] for v in range(variants)], "foreground_slices": [0, 1]}
               for i in range(n_instances)]
    by_split = [[e for e in entries if e["split"] == split] for split in splits]
    files = [{"path": f"index/{split}.jsonl", "split": split, "records": len(lines)}
             for split, lines in zip(splits, by_split)]
    return files, {f["path"]: lines for f, lines in zip(files, by_split)}


def test_selection_is_a_pure_function_of_the_seed_reading_only_the_chosen_shards():
    """Places among the instances the manifest counts, so that a dataset of any size is
    previewed from a few index shards (found by review: every index line was read and a few
    numbers per instance held, about 150 bytes and 25 us each: an hour and 20 GB for all of
    H01's synapses)."""
    files, lines = _shards()
    read = []

    def lines_of(f):
        read.append(f["path"])
        return lines[f["path"]]

    a = select_records(files, 5, 0, lines_of=lines_of)
    assert a == select_records(files, 5, 0, lines_of=lines_of) and len(a) == 5
    assert [c["instance_id"] for c in a] == sorted({c["instance_id"] for c in a})
    assert select_records(files, 5, 1, lines_of=lines_of) != a
    for c in a:
        assert 0 <= c["variant"] < 4 and c["seed_slices"] == [c["variant"] % 4]
        assert c["index_file"]["path"] == f"index/{c['split']}.jsonl"
        assert lines[c["index_file"]["path"]][c["line"]]["instance_id"] == c["instance_id"]
        assert c["variants_before"] == 4 * c["line"]
    read.clear()
    val = select_records(files, 8, 3, "val", lines_of)
    assert {c["split"] for c in val} == {"val"} and len(val) == 8 and read == ["index/val.jsonl"]
    everything = select_records(files, 100, 0, lines_of=lines_of)
    assert sorted(c["instance_id"] for c in everything) == sorted(1000 - 7 * i for i in range(20))
    # every variant can be shown, the last too (found by a mutation review)
    assert {c["variant"] for c in everything} == set(range(4))
    # an early version's entry lists no records: its lines are read to count them
    unlisted = [{k: v for k, v in f.items() if k != "records"} for f in files]
    read.clear()
    assert [c["instance_id"] for c in select_records(unlisted, 5, 0, lines_of=lines_of)] == \
        [c["instance_id"] for c in a] and sorted(set(read)) == sorted(lines)
    assert select_records([], 3, 0, lines_of=lines_of) == []


def test_choose_slices_shows_all_or_a_window_holding_the_seeds():
    assert choose_slices(8, [3, 4], [4], max_slices=8) == list(range(8))
    assert choose_slices(32, [14, 15, 16, 17], [15], max_slices=6) == list(range(13, 19))
    assert choose_slices(32, [0, 1, 2], [1], max_slices=6) == list(range(0, 6))      # clipped
    assert choose_slices(32, [29, 30, 31], [31], max_slices=6) == list(range(26, 32))
    shown = choose_slices(32, list(range(2, 30)), [20, 22], max_slices=5)       # tall synapse
    assert shown == list(range(19, 24)) and {20, 22} <= set(shown)
    # a foreground one slice taller than the window: centred on the seeds, so the seed at its
    # edge is shown (found by a mutation review: the foreground's window left it out)
    assert choose_slices(32, list(range(10, 17)), [16], max_slices=6) == list(range(14, 20))


def test_outline_is_the_border_of_the_mask():
    mask = np.zeros((6, 6), np.uint8)
    mask[1:5, 1:5] = 1
    border = outline(mask)
    assert border.sum() == 12 and not border[2:4, 2:4].any() and border[1, 1:5].all()


def test_preview_reads_the_chosen_records_exactly(views_dataset):
    ds = open_dataset(str(views_dataset))
    chosen = select_records(ds.files("index"), 4, 5, lines_of=ds.index_lines)
    got = read_selected(ds, chosen)
    want = {(r["instance_id"], r["variant"]): r for r in read_records(views_dataset)}
    assert len(got) == 4
    for g in got:
        w = want[(g["instance_id"], g["variant"])]
        np.testing.assert_array_equal(g["source"], w["source"])
        np.testing.assert_array_equal(g["target"], w["target"])
        assert tuple(g["seed_slices"]) == w["seed_slices"]


@pytest.mark.parametrize("layout", ["instance", "variant"])
def test_preview_reads_the_chosen_records_not_their_whole_shards(small_data, tmp_path,
                                                                 monkeypatch, layout):
    """A chosen record is found by its place in its shard (its index line's): the records
    before it are seeked over, those after it not read (found by review: preview read whole
    shards, 256 MB each by default, for a few records)."""
    out = tmp_path / layout
    run_pipeline(small_data.argv(out, "--variants", "3", "--record-layout", layout))
    ds = open_dataset(str(out))
    opened, read = Dataset.open, []

    class Counted:
        def __init__(self, stream):
            self._stream = stream

        def read(self, n=-1):
            data = self._stream.read(n)
            read.append(len(data))
            return data

        def __getattr__(self, name):
            return getattr(self._stream, name)

        def __iter__(self):               # index lines: not counted
            return iter(self._stream)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self._stream.close()

    monkeypatch.setattr(Dataset, "open",
                        lambda self, rel, gzip=False: Counted(opened(self, rel, gzip)))
    want = {(r["instance_id"], r["variant"]): r for r in read_records(out)}
    for seed in range(6):
        read.clear()
        (chosen,) = select_records(ds.files("index"), 1, seed, lines_of=ds.index_lines)
        (got,) = read_selected(ds, [chosen])
        np.testing.assert_array_equal(got["source"], want[(got["instance_id"],
                                                           got["variant"])]["source"])
        shard = ds.tfrecord_for(chosen["index_file"])
        assert shard["records"] >= 3
        assert sum(read) < 1.5 * shard["bytes"] / shard["records"], (seed, sum(read), shard)


def test_montage_tiles_show_raw_outline_and_seeds(views_dataset):
    ds = open_dataset(str(views_dataset))
    records = read_selected(ds, select_records(ds.files("index"), 2, 0, lines_of=ds.index_lines))
    canvas, labels = compose_montage(records, max_slices=16, tile_px=128)
    tile = 24                                            # 12 target voxels x 2: shown 1:1
    row = STRIP_PX + LABEL_LINES_PX + GAP_PX             # as tall as its label's lines
    assert canvas.shape == (HEADER_PX + 2 * row, LABEL_PX + 4 * (tile + GAP_PX), 3)
    for i, (r, label) in enumerate(zip(records, labels)):
        top = label["row_top"]
        assert top == HEADER_PX + i * row + STRIP_PX
        assert [z for _, z, _ in label["z"]] == [0, 1, 2, 3]
        assert [z for _, z, seed in label["z"] if seed] == list(r["seed_slices"])
        assert label["lines"][0] == f"id {r['instance_id']}"
        for z in range(4):
            left = LABEL_PX + z * (tile + GAP_PX)
            t = canvas[top:top + tile, left:left + tile]
            mask = r["target"][z].astype(bool)
            border = outline(mask)
            frame = np.ones_like(mask)
            frame[FRAME_PX:-FRAME_PX, FRAME_PX:-FRAME_PX] = False
            if z in r["seed_slices"]:      # a magenta frame, over the outline at the edge
                assert (t[frame] == SEED_RGB).all()
                assert (t[border & ~frame] == TARGET_RGB).all()
                inside = mask & ~border & ~frame
                raw = r["source"][z][inside].astype(float)[:, None]
                blend = (1 - SEED_ALPHA) * raw + SEED_ALPHA * np.asarray(SEED_RGB, float)
                np.testing.assert_allclose(t[inside], blend, atol=0.51)   # filled with magenta
            else:                  # the outline in cyan; elsewhere the raw value in grey
                assert (t[border] == TARGET_RGB).all()
                plain = ~border
                np.testing.assert_array_equal(t[plain][:, 0], r["source"][z][plain])
                np.testing.assert_array_equal(t[plain][:, 1], r["source"][z][plain])


def _picked(capsys):
    return [line for line in capsys.readouterr().out.splitlines() if line.startswith("id ")]


def test_cli_same_seed_same_image_other_seed_other_records(views_dataset, tmp_path, capsys):
    a, b, c = (tmp_path / name for name in ("a.png", "b.png", "c.png"))
    assert main(["preview", str(views_dataset), "--n", "3", "--out", str(a)]) == 0
    first = _picked(capsys)
    assert main(["preview", str(views_dataset), "--n", "3", "--out", str(b), "--seed",
                 "0"]) == 0
    assert _picked(capsys) == first and a.read_bytes() == b.read_bytes()
    assert main(["preview", str(views_dataset), "--n", "3", "--out", str(c), "--seed",
                 "2"]) == 0
    assert _picked(capsys) != first and c.read_bytes() != a.read_bytes()
    assert len(first) == 3 and all(int(line.split()[1]) in GOOD_IDS for line in first)


def test_a_dataset_of_npy_files_only_is_previewed_from_them(generated, tmp_path, capsys):
    """Found by review: preview (and so the demo's views) refused a dataset made with --formats
    npy; it reads the chosen instances' npy files, checked as NpyDataset checks them, and draws
    the montage the TFRecord shards of the same run give."""
    from tests.conftest import GENERATED_FLAGS

    data, out, _, _ = generated
    npy_only = tmp_path / "npy-only"
    run_pipeline(data.argv(npy_only, *GENERATED_FLAGS, "--formats", "npy"))
    assert not (npy_only / "tfrecord").exists()
    shown = {}
    for name, dataset in (("tfrecord", out), ("npy", npy_only)):
        png = tmp_path / f"{name}.png"
        assert main(["preview", str(dataset), "--n", "4", "--seed", "3", "--out", str(png)]) == 0
        shown[name] = (_picked(capsys), png.read_bytes())
    assert shown["npy"] == shown["tfrecord"] and len(shown["npy"][0]) == 4

    # an npy file that is not what its index line lists is named, as the loaders name it
    npy_dataset = open_dataset(str(npy_only))
    chosen = select_records(npy_dataset.files("index"), 4, 3, lines_of=npy_dataset.index_lines)
    source = next((npy_only / "npy" / "source").glob(f"source_{chosen[0]['instance_id']}.npy"))
    kept = source.read_bytes()
    source.write_bytes(kept[:-1])
    assert main(["preview", str(npy_only), "--n", "4", "--seed", "3", "--out",
                 str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"synanno-datagen: error: {source}: ") and "bytes that are not the " \
        "ones the index lists" in err and len(err.splitlines()) == 1

    # an index line listing fewer seed masks than its variants (found by review: IndexError)
    source.write_bytes(kept)
    victim = next(c for c in chosen if c["variant"] > 0)   # (a variant it has no mask for)
    index = npy_only / victim["index_file"]["path"]
    lines = [json.loads(line) for line in index.read_text().splitlines()]
    for line in lines:
        line["npy"]["seed_target"] = line["npy"]["seed_target"][:1]
    rewrite_listed(npy_only, victim["index_file"]["path"],
                   "".join(json.dumps(line) + "\n" for line in lines))
    assert main(["preview", str(npy_only), "--n", "4", "--seed", "3", "--out",
                 str(tmp_path / "y.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"synanno-datagen: error: {index}: ") and len(err.splitlines()) == 1
    assert "npy seed masks" in err, err


def test_row_labels_of_small_crops_do_not_run_into_the_next_row(views_dataset):
    """Found by review: a row was as tall as its tiles, and four lines of text are taller than
    a small crop's (24 px here): each row's label was drawn over the next one's."""
    import io

    from synanno_datagen.reading.preview import render_png

    ds = open_dataset(str(views_dataset))
    records = read_selected(ds, select_records(ds.files("index"), 2, 0, lines_of=ds.index_lines))
    canvas, labels = compose_montage(records, max_slices=16, tile_px=128)

    def text_rows(label):
        with Image.open(io.BytesIO(render_png(canvas, [label]))) as image:
            rgb = np.asarray(image.convert("RGB"))[HEADER_PX:, :LABEL_PX]
        return set(np.flatnonzero((rgb < 128).any(axis=(1, 2))).tolist())

    first, second = text_rows(labels[0]), text_rows(labels[1])
    assert first and second and max(first) < min(second)


def test_image_height_grows_with_n(views_dataset, tmp_path, capsys):
    sizes = {}
    for n in (1, 2, 4):
        out = tmp_path / f"p{n}.png"
        assert main(["preview", str(views_dataset), "--n", str(n), "--out", str(out)]) == 0
        assert f"preview: {out}" in capsys.readouterr().out
        with Image.open(out) as image:
            assert image.format == "PNG" and image.mode == "RGB"
            sizes[n] = image.size
    row = STRIP_PX + LABEL_LINES_PX + GAP_PX   # (tiles of 24 px: the label's lines are taller)
    assert sizes == {n: (LABEL_PX + 4 * (24 + GAP_PX), HEADER_PX + n * row) for n in (1, 2, 4)}


def test_split_filter_and_palette_option(views_dataset, tmp_path, capsys):
    out = tmp_path / "val.png"
    assert main(["preview", str(views_dataset), "--n", "10", "--split", "val", "--colours", "64",
                 "--out", str(out)]) == 0
    picked = _picked(capsys)
    index = [json.loads(line) for p in (views_dataset / "index").glob("val-*.jsonl")
             for line in p.read_text().splitlines()]
    assert len(picked) == len(index) and all("(val)" in line for line in picked)
    with Image.open(out) as image:
        assert image.mode == "P" and len(image.getcolors()) <= 64


def test_bad_preview_requests_are_one_line_and_exit_2(views_dataset, tmp_path, capsys):
    out = str(views_dataset)
    assert_usage_error(capsys, ["preview", out, "--n", "0"], "--n 0")
    assert_usage_error(capsys, ["preview", out, "--split", "test"], "--split test",
           "train, val")
    assert_usage_error(capsys, ["preview", str(tmp_path / "none")], "not a dataset directory")
    assert_usage_error(capsys, ["preview", out, "--colours", "300"], "--colours 300")
    assert_usage_error(capsys, ["preview", out, "--n", "many"], "--n", "invalid int")


def test_a_montage_larger_than_an_image_viewer_opens_is_refused_naming_the_rows_that_fit(
        views_dataset, tmp_path, capsys, monkeypatch):
    """Found by review: --n had no bound, and each row took ~40 MB (matplotlib's image path),
    so --n 64 of the demo peaked at 2.7 GB. A montage is at most Pillow's MAX_IMAGE_PIXELS,
    refused before any record is read; the rows named fit, one more does not."""
    import re

    from synanno_datagen.reading import preview

    shape = open_dataset(str(views_dataset)).manifest["arrays"]["shape_zyx"]   # 4 x 24 x 24
    for limit in (40_000, 100_000, 250_000, 1_000_000):
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)   # (small limits: quick)
        with pytest.raises(UsageError, match=r"at most (\d+) rows") as refused:
            preview._check_size(shape, 10_000, 16, 128)
        rows = int(re.search(r"at most (\d+) rows", str(refused.value)).group(1))
        preview._check_size(shape, rows, 16, 128)
        with pytest.raises(UsageError):
            preview._check_size(shape, rows + 1, 16, 128)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", int(np.prod(montage_size(shape, 1, 16)[:2])))
    preview._check_size(shape, 1, 16, 128)                      # exactly the limit
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 40_000)
    with pytest.raises(UsageError, match=r"^--n 2: a montage of 282 x 186 pixels, more than an "
                       r"image viewer opens \(40,000 pixels\); ask for at most 1 rows"):
        preview._check_size(shape, 2, 16, 128)
    real_read = preview.read_selected
    monkeypatch.setattr(preview, "read_selected", lambda *a: pytest.fail("records read"))
    assert_usage_error(capsys, ["preview", str(views_dataset), "--n", "3"], "--n 3",
                       "at most 1 rows")
    monkeypatch.setattr(preview, "read_selected", real_read)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 45_000)      # 282 x 186 pixels do not fit,
    assert_usage_error(capsys, ["preview", str(views_dataset), "--n", "2"], "--n 2")
    assert main(["preview", str(views_dataset), "--n", "2", "--tile-px", "8", "--out",
                 str(tmp_path / "p.png")]) == 0                # 218 x 186 (8 px tiles) do


def test_a_montages_size_follows_the_crops_y_x_and_the_slices_shown():
    height, width, th, tw = montage_size((40, 10, 20), 2, 16, 128)   # deep, wider than tall
    assert (th, tw) == (10, 20) and width == LABEL_PX + 16 * (20 + GAP_PX)
    assert height == HEADER_PX + 2 * (STRIP_PX + LABEL_LINES_PX + GAP_PX)
    assert montage_size((40, 300, 600), 1, 8, 128)[1:] == (LABEL_PX + 8 * (128 + GAP_PX), 64, 128)


def test_the_rendered_montage_is_the_canvas_where_no_text_is_drawn(views_dataset):
    """The labels are drawn over the canvas, not the canvas through matplotlib: every tile's
    pixels come out as composed, and text only darkens the white margins."""
    import io

    ds = open_dataset(str(views_dataset))
    records = read_selected(ds, select_records(ds.files("index"), 2, 0, lines_of=ds.index_lines))
    canvas, labels = compose_montage(records, max_slices=16, tile_px=128)
    with Image.open(io.BytesIO(render_png(canvas, labels))) as image:
        rgb = np.asarray(image.convert("RGB"))
    tiles = np.zeros(canvas.shape[:2], bool)
    for label in labels:
        tiles[label["row_top"]:label["row_top"] + 24, LABEL_PX:] = True
    np.testing.assert_array_equal(rgb[tiles], canvas[tiles])
    text = (rgb != canvas).any(axis=2)
    assert text.sum() > 500 and not (text & tiles).any()
    assert (rgb[text] <= canvas[text]).all()     # black and magenta text over white
    # a compressed PNG (found by mutation review: level 0 passed every test)
    assert len(render_png(canvas, labels)) < canvas.nbytes / 4


def test_a_preview_or_plots_that_cannot_be_written_is_one_line(views_dataset, tmp_path, capsys):
    from synanno_datagen.cli import main

    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    for argv, flag in ((["preview", str(views_dataset), "--out", f"{blocker}/p.png"], "--out"),
                       (["inspect", str(views_dataset), "--plots", f"{blocker}/plots"],
                        "--plots")):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith(f"synanno-datagen: error: {flag} "
                                                             f"{blocker}/")
        assert "cannot write it" in err


def test_preview_of_a_cut_shard_names_it_as_the_loaders_do(views_dataset, tmp_path, capsys):
    import json
    import shutil

    from synanno_datagen.cli import main

    copy = tmp_path / "copy"
    shutil.copytree(views_dataset, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    for shard in manifest["files"]["tfrecord"]:   # every shard: whichever preview picks
        path = copy / shard["path"]
        path.write_bytes(path.read_bytes()[:shard["bytes"] // 2])
    assert main(["preview", str(copy), "--out", str(tmp_path / "p.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and ": it has " in err and "the manifest says" in err
    assert not (tmp_path / "p.png").exists()


def test_a_damaged_record_skipped_over_is_named_by_its_number(small_data, tmp_path):
    """Found by review: a record whose length fails its CRC among those a reader seeks over was
    named 'record 1' whatever its place."""
    import struct

    from synanno_datagen import DatasetError
    from synanno_datagen.reading.dataset import open_dataset
    from synanno_datagen.reading.records import read_records

    from tests.test_pipeline import run_pipeline

    copy = tmp_path / "copy"
    _, manifest = run_pipeline(small_data.argv(copy, "--record-layout", "variant", "--variants",
                                               "3", "--formats", "tfrecord"))
    shard = max((f for f in manifest["files"]["tfrecord"]), key=lambda f: f["records"])
    assert shard["records"] >= 4 and not shard["path"].endswith(".gz")
    path = copy / shard["path"]
    data = bytearray(path.read_bytes())
    offset = 0
    for _ in range(2):   # past records 1 and 2
        offset += 8 + 4 + struct.unpack("<Q", data[offset:offset + 8])[0] + 4
    data[offset] ^= 0xFF   # record 3's length
    path.write_bytes(bytes(data))
    with pytest.raises(DatasetError, match=r": record 3 does not read \("):
        list(read_records(open_dataset(str(copy)), shard, skip=3))


# Found by mutation review: each of the mutants these tests name passed every test (the row's
# seed label listing the foreground, " seed" written on the other slices, the window of a deep
# crop centred on its seeds, or on every slice when the index has no foreground slices).

def _one_record(depth=4, foreground=(0, 1, 2, 3), seeds=(1,), listed=True):
    target = np.zeros((depth, 6, 6), np.uint8)
    for z in foreground:
        target[z, 2:4, 2:4] = 1
    return {"source": np.full((depth, 6, 6), 100, np.uint8), "target": target,
            "seed_slices": list(seeds), "foreground_slices": list(foreground) if listed else None,
            "instance_id": 9, "variant": 0, "split": "train"}


def test_a_rows_label_names_its_seed_slices_and_only_seeds_are_marked(monkeypatch):
    from matplotlib.axes import Axes

    from synanno_datagen.reading.preview import render_png

    canvas, labels = compose_montage([_one_record(seeds=(1, 2))], max_slices=16)
    assert labels[0]["lines"][2] == "seed z: 1, 2"
    texts, draw = [], Axes.text
    monkeypatch.setattr(Axes, "text", lambda self, x, y, s, *a, **k: (
        texts.append(s), draw(self, x, y, s, *a, **k))[1])
    render_png(*compose_montage([_one_record(seeds=(1,))], max_slices=16))
    assert [t for t in texts if t.startswith("z")] == ["z0", "z1 seed", "z2", "z3"]


@pytest.mark.parametrize("listed", [True, False])
def test_the_window_of_a_deep_crop_is_centred_on_its_foreground(listed):
    record = _one_record(depth=32, foreground=range(20, 24), seeds=(20,), listed=listed)
    _, labels = compose_montage([record], max_slices=4)
    assert [z for _, z, _ in labels[0]["z"]] == [20, 21, 22, 23]
    record = _one_record(depth=32, foreground=range(10, 20), seeds=(10,), listed=listed)
    _, labels = compose_montage([record], max_slices=10)
    assert [z for _, z, _ in labels[0]["z"]] == list(range(10, 20))


def test_preview_reads_every_run_of_an_incremental_root(small_data, tmp_path):
    """Each run of a root has shards of the same names (``train-00000-of-00001``); preview
    finds each record in its own run's shard (found by mutation review: a shard key without
    the run read a healthy two-run root as damaged, and no test previewed one)."""
    from synanno_datagen.reading.preview import run_preview

    root = tmp_path / "root"
    for extra in (["--num-instances", "3"], []):
        run_pipeline(small_data.argv(root, "--incremental", "--variants", "2", *extra))
    assert (root / "runs" / "00002").is_dir()
    chosen = run_preview(str(root), str(tmp_path / "p.png"), n=10, seed=0)
    assert sorted(c["instance_id"] for c in chosen) == sorted(GOOD_IDS)   # one row each


@pytest.mark.parametrize("change", [
    lambda line: {**line, "instance_id": "12"}, lambda line: {**line, "seed_slices": []},
    lambda line: {**line, "seed_slices": 7}, lambda line: {**line, "foreground_slices": ["a"]},
    lambda line: {k: v for k, v in line.items() if k != "split"}, lambda line: [line]])
def test_an_index_line_preview_cannot_use_is_one_line_naming_the_dataset(views_dataset, tmp_path,
                                                                       capsys, change):
    """Found by review: an index line whose instance_id was text, whose seed slices were empty
    or a number, whose foreground slices were text, without its split, or a JSON list, was a
    KeyError or TypeError traceback from preview (inspect named it in one line)."""
    import shutil

    from tests.conftest import rewrite_listed

    copy = tmp_path / "copy"
    shutil.copytree(views_dataset, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    relative = manifest["files"]["index"][0]["path"]
    lines = (copy / relative).read_text().splitlines()
    rewrite_listed(copy, relative, "\n".join([json.dumps(change(json.loads(lines[0])))]
                                             + lines[1:]) + "\n")
    assert_usage_error(capsys, ["preview", str(copy), "--n", "1000", "--max-slices", "2",
                                "--out", str(tmp_path / "p.png")], f"{copy / 'manifest.json'}")
