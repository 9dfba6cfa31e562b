"""``synanno-datagen demo``: make the embedded H01-like demo data (cached) and run on it."""
from __future__ import annotations

import logging
import os
from typing import List, Sequence, Tuple

from synanno_datagen.pipeline.demo_data import FILE_URL, default_cache_dir, make_demo_data

log = logging.getLogger(__name__)

# Demo options: the product's defaults except a smaller crop, so it runs in a minute on 2 cores.
# The demo's preview: small enough (under 300 KB) to sit in the README as it is.
DEMO_PREVIEW = {"n": 6, "seed": 0, "max_slices": 8, "tile_px": 80, "colours": 256}
DEMO_OPTIONS = ["--crop-size", "64", "64", "16", "--variants", "4", "--max-seed-slices", "3",
                "--splits", "train=0.8,val=0.1,test=0.1", "--seed", "0"]


def demo_argv(output_dir: str, cache_dir: str = None) -> List[str]:
    """The ``run`` arguments of the demo; with --overwrite only when ``output_dir`` holds an
    earlier demo's dataset (made from the demo's table, with whatever options), so that the
    demo never replaces a dataset of the user's."""
    data = make_demo_data(cache_dir or default_cache_dir())
    overwrite = ["--overwrite"] if _made_from(output_dir, data.table_path) else []
    # plain paths: run reads a file:// URL's percent-escapes, which a cache path may hold
    return ["--materialization", data.table_path,
            "--source-url", data.source_url[len(FILE_URL):],
            "--target-url", data.target_url[len(FILE_URL):],
            "--output-dir", output_dir] + DEMO_OPTIONS + overwrite


def _made_from(output_dir: str, table_path: str) -> bool:
    """Whether ``output_dir`` holds a dataset whose manifest names ``table_path`` as its table
    (an unreadable one is not known to be the demo's, so not replaced)."""
    from synanno_datagen.layout import MANIFEST, join
    from synanno_datagen.pipeline.output_checks import own_manifest

    manifest = own_manifest(join(output_dir, MANIFEST))
    return manifest is not None and manifest["config"].get("materialization") == table_path


def run_demo(output_dir: str, beam_args: Sequence[str] = (), while_running=None) -> dict:
    """``run`` on the demo data (``while_running``: as run takes it)."""
    from synanno_datagen.pipeline.run import run

    log.info("making or reusing the demo data in %s", default_cache_dir())
    return run(demo_argv(output_dir) + list(beam_args),
               **({"while_running": while_running} if while_running else {}))


def views_dir(output_dir: str) -> str:
    """Where the demo puts its preview and plots: beside the dataset, not inside it, so the
    dataset directory holds exactly the files its manifest lists (a local folder spelled
    ``.``, ``DIR/.`` or ``DIR/..`` is named by its path first)."""
    if "://" in output_dir:
        return output_dir.rstrip("/") + "-views"
    folder = os.path.normpath(output_dir)
    if os.path.basename(folder) in (".", ".."):
        folder = os.path.abspath(folder)
    return folder + "-views"


def write_demo_views(output_dir: str) -> Tuple[str, List[str]]:
    """Write VIEWS/preview.png and VIEWS/plots/*.png for the dataset; return their paths."""
    from synanno_datagen.reading.inspection import inspect_dataset
    from synanno_datagen.reading.plots import write_plots
    from synanno_datagen.reading.preview import run_preview
    from synanno_datagen.layout import join

    views = views_dir(output_dir)
    preview = join(views, "preview.png")
    run_preview(output_dir, preview, **DEMO_PREVIEW)
    return preview, write_plots(inspect_dataset(output_dir), join(views, "plots"))
