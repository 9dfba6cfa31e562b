"""``synanno-datagen demo``: make the embedded H01-like demo data (cached) and run on it."""
from __future__ import annotations

import logging
from typing import List, Sequence

from pipeline.demo_data import default_cache_dir, make_demo_data

log = logging.getLogger(__name__)

# Demo options: the product's defaults except a smaller crop, so it runs in a minute on 2 cores.
DEMO_OPTIONS = ["--crop-size", "64", "64", "16", "--variants", "4", "--max-seed-slices", "3",
                "--splits", "train=0.8,val=0.1,test=0.1", "--seed", "0", "--overwrite"]


def demo_argv(output_dir: str, cache_dir: str = None) -> List[str]:
    data = make_demo_data(cache_dir or default_cache_dir())
    return ["--materialization", data.table_path, "--source-url", data.source_url,
            "--target-url", data.target_url, "--output-dir", output_dir] + DEMO_OPTIONS


def run_demo(output_dir: str, beam_args: Sequence[str] = ()) -> dict:
    from pipeline.cli import run

    log.info("making or reusing the demo data in %s", default_cache_dir())
    return run(demo_argv(output_dir) + list(beam_args))
