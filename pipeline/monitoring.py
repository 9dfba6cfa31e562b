"""The end of a run as one JSON line, for machines (log-based alerts, schedulers' logs).

``{"event":"synanno_datagen_run","status":...}``, compact, keys sorted, so a log filter can match
its text exactly. Statuses and exit codes:

- ``ok`` (0): the dataset is complete; ``empty`` is true when the run wrote no instance (an
  incremental run with nothing new, or a table whose every row failed);
- ``submitted`` (0): the runner only submitted the job (a Flex Template's launcher, or
  ``--no_wait_until_finish`` on a remote runner); the job's last step logs its own ``ok`` line
  when it ends;
- ``refused`` (2): a usage or input error, before any work;
- ``busy`` (3): another run holds the output directory's lease, before any work;
- ``failed`` (1): the run started and raised.

The CLI prints it on stdout at the end of ``run`` and ``demo`` (also with ``--quiet``); on other
runners the pipeline's last step (pipeline.finish) logs the ``ok`` line through ``logging`` (on
Dataflow a worker log entry). This module imports no Beam: the CLI takes SIGTERM and SIGINT
before Beam loads (about 2 s), with the closing line ready.
"""
from __future__ import annotations

import json
import logging
from typing import Optional

from synanno_datagen import __version__
from synanno_datagen.errors import redact
from synanno_datagen.layout import MANIFEST, join

log = logging.getLogger(__name__)

EVENT = "synanno_datagen_run"
OK, SUBMITTED, REFUSED, BUSY, FAILED = "ok", "submitted", "refused", "busy", "failed"
COUNT_KEYS = ("rows_read", "rows_rejected", "rows_not_selected", "instances_selected",
              "instances_written", "variants_written", "failed", "vanished_instances")


def run_event(command: str, status: str, exit_code: int, duration_s: float,
              output_dir: Optional[str], manifest: Optional[dict] = None,
              error: Optional[str] = None) -> dict:
    """The event of one run: counts and failures by reason from its manifest, if it has one."""
    event = {"event": EVENT, "command": command, "status": status, "exit_code": exit_code,
             "duration_s": round(duration_s, 3), "output_dir": output_dir,
             "version": __version__}
    if manifest is not None:
        counts = manifest["counts"]
        incremental = manifest.get("incremental") or {}
        event.update({
            "manifest": join(manifest["config"]["output_dir"], MANIFEST),
            "run_dir": incremental.get("run_dir"),
            "instances_written": counts["instances_written"],
            "empty": counts["instances_written"] == 0,
            "counts": {k: counts[k] for k in COUNT_KEYS if k in counts},
            "failures": counts["failures"],
            "remembered_failures": counts.get("remembered_failures", {}),
        })
        if incremental.get("replaces"):   # a changed generation config: a fresh dataset
            event["replaces"] = incremental["replaces"]
    if error is not None:
        event["error"] = redact(error)
    return event


def event_line(event: dict) -> str:
    return json.dumps(event, sort_keys=True, separators=(",", ":"))
