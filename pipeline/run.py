"""``run(argv)``: validate the options, run the pipeline to completion, return the manifest."""
from __future__ import annotations

from typing import Sequence


def run(argv: Sequence[str]) -> dict:
    """Parse and check ``argv`` (run flags, then Beam's), run the pipeline, return the manifest."""
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    from synanno_datagen.pipeline.build import build
    from synanno_datagen.pipeline.config import parse
    from synanno_datagen.pipeline.manifest import clear_dataset, load_manifest

    config, beam_args = parse(argv)
    options = PipelineOptions(beam_args)
    clear_dataset(config.output_dir)  # parse() refused a different config unless --overwrite
    with beam.Pipeline(options=options) as p:
        build(p, config)
    return load_manifest(config.output_dir)
