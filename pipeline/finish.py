"""The pipeline's last step: frees the run's lease and logs its closing ``ok`` line
(pipeline.monitoring), for runs whose launcher does not wait (a Flex Template's job). It lives
apart from pipeline.monitoring so that module stays free of Beam: the CLI imports it before it
takes its signals."""
from __future__ import annotations

import time

import apache_beam as beam

from synanno_datagen.pipeline.monitoring import OK, event_line, log, run_event


class FinishRunFn(beam.DoFn):
    """The pipeline's last step: removes the run's lease (pipeline.lease) and logs the ``ok``
    event, for runs whose launcher does not wait (Flex Templates). Passes the manifest on."""

    def __init__(self, lease, output_dir: str):
        self._lease = lease
        self._output_dir = output_dir

    def process(self, manifest):
        from synanno_datagen.pipeline.lease import release, started_epoch

        release(self._lease)
        duration = time.time() - started_epoch(self._lease)
        log.info("%s", event_line(run_event("run", OK, 0, duration, self._output_dir, manifest)))
        yield manifest
