"""``run(argv)``: validate the options, take the output directory's lease, run the pipeline,
return the manifest (None when the runner only submitted the job)."""
from __future__ import annotations

import contextlib
import dataclasses
import logging
from typing import Optional, Sequence

# Runners whose work lives and dies with this process (and its children), by --runner's name
# in lower case: the DirectRunners (bundles in this process or its worker processes) and Prism
# (bundles in a runner process this one starts).
DIRECT_RUNNERS = ("direct", "directrunner", "switchingdirectrunner", "bundlebaseddirectrunner")
LOCAL_RUNNERS = DIRECT_RUNNERS + ("prism", "prismrunner")


def only_submits(options) -> bool:
    """True when running the pipeline only submits it and the job writes the dataset later: a
    Flex Template's launcher (Beam writes the job to ``--template_location``) or
    ``--no_wait_until_finish``."""
    from apache_beam.options.pipeline_options import GoogleCloudOptions, StandardOptions

    return bool(options.view_as(GoogleCloudOptions).template_location
                or options.view_as(StandardOptions).no_wait_until_finish)


def bound_to_this_process(options) -> bool:
    """Whether the run ends when this process does: a local runner it waits for (then a lease
    whose process is gone is free; a remote job may outlive its launcher)."""
    return _runner_name(options) in LOCAL_RUNNERS and not only_submits(options)


def _runner_name(options) -> str:
    """--runner's name in lower case (the DirectRunner by default)."""
    from apache_beam.options.pipeline_options import StandardOptions

    runner = options.view_as(StandardOptions).runner or "DirectRunner"
    return (runner if isinstance(runner, str) else type(runner).__name__).lower()


def run(argv: Sequence[str], while_running=contextlib.nullcontext) -> Optional[dict]:
    """Parse and check ``argv`` (run flags, then Beam's), hold the lease on ``--output-dir``
    (LeaseHeld if another run does), run the pipeline inside ``while_running()`` (a context,
    e.g. the CLI's progress line), return the manifest.

    The pipeline's last step removes the lease. If the run fails here, the lease is removed
    here, unless a remote job it started may still be running (then that job's end, expiry or
    --break-lease frees it).
    """
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    from synanno_datagen.pipeline.build import build
    from synanno_datagen.pipeline.config import check, settle
    from synanno_datagen.pipeline.lease import acquire, release
    from synanno_datagen.pipeline.manifest import load_manifest

    with records_held_until_checked():
        config, beam_args = check(argv)
        options = PipelineOptions(beam_args)
        lease = acquire(config.output_dir, config.lease_hours, config.break_lease,
                        process_bound=bound_to_this_process(options))
        try:
            config = dataclasses.replace(settle(config), lease=lease)
        except BaseException:
            release(lease)
            raise
        # settle() refused a different config unless --overwrite; the job clears the earlier
        # dataset as its first step
    p, job_goes_on = None, False
    try:
        with while_running(), beam.Pipeline(options=options) as p:
            build(p, config)
        if only_submits(options) and not _finished_here(options, p.result):
            job_goes_on = True
            return None
        return load_manifest(config.output_dir)
    finally:
        if not job_goes_on and not _may_still_run(getattr(p, "result", None)):
            release(lease)


@contextlib.contextmanager
def records_held_until_checked():
    """Log records reaching the root logger's handlers are held while the body (the checks
    before any work) runs, and passed on when it ends, unless it ends in a refusal (UsageError,
    LeaseHeld): that is one line alone, without the warnings of checks that passed before the
    one that refused."""
    from synanno_datagen.errors import LeaseHeld, UsageError

    held = []   # (handler, record), in the order they came

    def holder(handler):
        def hold(record):
            held.append((handler, record))
            return False
        return hold

    holders = [(handler, holder(handler)) for handler in logging.getLogger().handlers]
    for handler, hold in holders:
        handler.addFilter(hold)
    try:
        yield
    except (UsageError, LeaseHeld):
        held.clear()
        raise
    finally:
        for handler, hold in holders:
            handler.removeFilter(hold)
        for handler, record in held:
            handler.handle(record)


def _finished_here(options, result) -> bool:
    """Whether a job run with ``--no_wait_until_finish`` has already finished: a DirectRunner
    runs the whole job before it returns. (A Flex Template launcher's result says DONE too,
    before its job has run: ``--template_location`` only submits.)"""
    from apache_beam.options.pipeline_options import GoogleCloudOptions
    from apache_beam.runners.runner import PipelineState

    return (not options.view_as(GoogleCloudOptions).template_location
            and _runner_name(options) in LOCAL_RUNNERS and result is not None
            and result.state == PipelineState.DONE)


def _may_still_run(result) -> bool:
    """Whether a job this run started may still be running (a remote job whose wait was
    interrupted); False when none was started or it ended."""
    from apache_beam.runners.runner import PipelineState

    if result is None:
        return False
    try:
        return not PipelineState.is_terminal(result.state)
    except Exception:  # the service cannot say: assume it runs
        return True
