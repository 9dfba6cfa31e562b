"""``synanno-datagen``: the command line. Thin: parse, run, summarise (the summary's text:
summary; how a run stops on a signal, and what it moves off stdout meanwhile: process).

Usage errors print one line and exit with code 2 before any work starts; a run that finds another
run writing its output directory prints one line and exits with code 3. ``run`` and ``demo`` end
with one JSON line on stdout (pipeline.monitoring), whatever happened.
"""
from __future__ import annotations

import argparse
import functools
import logging
import os
import signal
import sys
import time
from contextlib import nullcontext
from typing import List, Optional, Sequence

from synanno_datagen import __version__, process
from synanno_datagen.beam_errors import error_summary, not_a_one_line_error, unwrapped
from synanno_datagen.errors import (ConfigError, LeaseHeld, LeaseLost, StorageUnavailable,
                                    Terminated, UsageError, first_line, redact)
from synanno_datagen.pipeline.options import UsageParser, run_parser
from synanno_datagen.pipeline.progress import DEFAULT_INTERVAL_S, ProgressPrinter, runs_in_process
from synanno_datagen.reading.commands import add_commands as add_view_commands
from synanno_datagen.summary import summary
from synanno_datagen.transforms.table_formats import TableFormatError

FAILED = 1
USAGE_ERROR = 2
BUSY = 3  # another run holds the output directory's lease
TERMINATED = 128 + 15  # SIGTERM, as a shell reports a process it ended
INTERRUPTED = 128 + 2  # SIGINT (Ctrl-C)
PROG = "synanno-datagen"


def _redacted(record: logging.LogRecord) -> bool:
    """A logging filter: the record's message and traceback without URL passwords
    (errors.redact)."""
    message = record.getMessage()
    if "@" in message:
        record.msg, record.args = redact(message), None
    if record.exc_info and not record.exc_text:
        record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
    return True


def _redacted_traceback(kind, value, tb) -> None:
    """sys.excepthook: an uncaught exception's traceback, as Python prints it, without URL
    passwords (errors.redact)."""
    import traceback

    sys.stderr.write(redact("".join(traceback.format_exception(kind, value, tb))))


def output_parser() -> UsageParser:
    """Flags of ``run`` and ``demo`` that shape what the command prints."""
    parser = UsageParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--quiet", action="store_true",
                        help="print nothing but errors and the closing JSON line (no "
                        "progress, no summary)")
    parser.add_argument("--progress-interval", type=float, default=DEFAULT_INTERVAL_S,
                        metavar="SECONDS", help="seconds between progress lines on stderr "
                        f"(default {DEFAULT_INTERVAL_S:g})")
    return parser


def print_run_help() -> None:
    """``run --help``: the run flags and the output flags (the latter are not template
    parameters, so they are not in config's run parser)."""
    parser = run_parser(f"{PROG} run", parents=[output_parser()])
    parser.print_help()


def output_dir_given(argv: Sequence[str], default: Optional[str] = None) -> Optional[str]:
    """``--output-dir`` as given (for the closing line of a run that stopped early)."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False, exit_on_error=False)
    parser.add_argument("--output-dir", default=default)
    try:
        return parser.parse_known_args(list(argv))[0].output_dir
    except argparse.ArgumentError:   # "--output-dir" without a value: refused already
        return default


def generate(command: str, argv: List[str], demo_parser) -> int:
    """``run`` or ``demo``: progress lines on stderr while it runs, the summary, then the
    closing JSON line on stdout, whatever happened (errors go on to ``main``)."""
    if "-h" in argv or "--help" in argv:
        if command == "run":
            print_run_help()
        else:
            demo_parser.print_help()
        return 0
    from synanno_datagen.pipeline import monitoring   # (no Beam: the signals are taken first)

    started, manifest = time.monotonic(), None
    made: dict = {}   # the dataset's manifest, once it is complete
    status, code, error = monitoring.FAILED, FAILED, None
    put_back = process.take_signals()
    root_level = None   # the root logger's level before --quiet raised it
    try:
        output, rest = output_parser().parse_known_args(argv)
        if not 0 < output.progress_interval < float("inf"):
            raise ConfigError(f"--progress-interval {output.progress_interval:g}: must be "
                              "positive")
        if output.quiet:
            root_level = logging.getLogger().level
            logging.getLogger().setLevel(logging.ERROR)
        manifest = _generate(command, rest, demo_parser, output, made)
        status, code = (monitoring.OK if manifest is not None else monitoring.SUBMITTED), 0
        return 0
    except LeaseHeld as e:
        status, code, error = monitoring.BUSY, BUSY, str(e)
        raise
    except UsageError as e:
        status, code, error = monitoring.REFUSED, USAGE_ERROR, str(e)
        raise
    except BaseException as e:
        if process.state["received"]:   # raised in a step, Beam wraps it in its RuntimeError
            stopped = Terminated(process.state["received"])
            code, error = stopped.exit_code, stopped.summary()
            manifest = made.get("manifest")   # (stopped after the dataset: the demo's views)
            if manifest is not None:
                stopped.complete = manifest["config"]["output_dir"]
                stopped.views = command == "demo"
            raise stopped from None
        known = unwrapped(e)
        error = error_summary(known)
        if known is not e:
            raise known from None
        raise
    finally:
        process.state["closed"] = True   # the closing line stands: a signal from here on is ignored
        process.restore_stdout()         # (a signal may have cut stdout_to_stderr's own restore)
        try:
            event = monitoring.run_event(command, status, code, time.monotonic() - started,
                                         output_dir_given(argv, "synanno-demo-output"
                                                          if command == "demo" else None),
                                         manifest, error)
            try:
                print(monitoring.event_line(event), flush=True)
            except BrokenPipeError:
                raise
            except OSError as e:   # a refusal or failure goes on: its line says why
                if status in (monitoring.OK, monitoring.SUBMITTED):
                    raise StdoutUnwritable(e, status) from None
        finally:
            if not process.state["keep"]:   # (the command keeps them while the interpreter ends)
                put_back()
                if root_level is not None:   # (--quiet: a caller's own logging as it was)
                    logging.getLogger().setLevel(root_level)



def _generate(command: str, argv: List[str], demo_parser, output, made: dict
              ) -> Optional[dict]:
    """Run (or demo) and print the summary; the manifest, or None if the job was submitted.
    ``made["manifest"]``: the manifest as soon as the dataset is complete (before the demo's
    views)."""
    quiet = output.quiet
    if command == "demo":
        from synanno_datagen.pipeline.demo import run_demo, views_dir
        from synanno_datagen.pipeline.output_checks import check_writable, to_output_dir

        args, beam_args = demo_parser.parse_known_args(argv)
        # as run names it ('~/d' and './d' are the folder run writes; a bad one is refused)
        args.output_dir = to_output_dir(args.output_dir)
        try:   # before any work, not after the run
            check_writable(views_dir(args.output_dir))
        except UsageError as e:
            raise UsageError(f"--output-dir {args.output_dir}: the demo writes its views "
                             f"beside it, in {views_dir(args.output_dir)}, which it cannot "
                             f"write ({e})") from None
    else:
        beam_args = argv
    # Bundles running in other processes never reach this process's tally: summary only. The
    # lines start with the pipeline, after the checks (a refusal is its one line alone).
    show = not quiet and runs_in_process(beam_args)
    progress = functools.partial(ProgressPrinter, sys.stderr, output.progress_interval) \
        if show else nullcontext
    with process.stdout_to_stderr():   # stdout holds only our lines (libraries print there)
        if command == "demo":
            manifest = run_demo(args.output_dir, beam_args, progress)
        else:
            from synanno_datagen.pipeline.run import run

            manifest = run(argv, progress)
    made["manifest"] = manifest
    if manifest is None:  # a Flex Template's launcher: the job writes the dataset later
        if not quiet:
            _say("submitted: the job writes the dataset and logs its own closing line")
        return None
    if not quiet:
        _say(summary(manifest, manifest["config"]["output_dir"]))
    if command == "demo":
        from synanno_datagen.pipeline.demo import write_demo_views

        preview, plots = write_demo_views(args.output_dir)
        if not quiet:
            _say(f"preview: {preview}\nplots: " + " ".join(plots))
    return manifest


class StdoutUnwritable(Exception):
    """Our lines could not be written to stdout (a full disk, ``>/dev/full``): the run's
    ``status`` stands; the command says so on stderr and exits 1."""

    def __init__(self, error: OSError, status: str = ""):
        super().__init__(str(error))
        self.error, self.status = error, status


def _tell(text: str) -> None:
    """A one-line message on stderr; one stderr cannot take (a full disk) changes nothing."""
    try:
        print(text, file=sys.stderr)
    except OSError:
        pass


def _say(text: str) -> None:
    """One of the run's lines on stdout, before the closing line: one that cannot be written
    does not fail the run (the closing line, written next, then says so)."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        raise
    except OSError:
        pass


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = UsageParser(prog=PROG, description="Synapse seed-slice training data.")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="{run,demo,inspect,preview}",
                                parser_class=UsageParser)
    sub.add_parser("run", add_help=False, help="generate a dataset (see 'run --help')")
    demo = sub.add_parser("demo", parents=[output_parser()],
                          help="make the embedded demo data and run on it",
                          epilog="Other arguments go to 'run' after the demo's own: run flags "
                                 "(--overwrite, --variants K, ...) and Beam options "
                                 "(--direct_num_workers 2, ...).")
    demo.add_argument("--output-dir", default="synanno-demo-output", metavar="DIR",
                      help="where the dataset goes (its preview and plots: DIR-views)")
    views = add_view_commands(sub)  # inspect, preview
    if not argv:   # no command: the help, as a usage error (a script must not see success)
        parser.print_help(sys.stderr)
        return USAGE_ERROR
    if argv[0] in ("-h", "--help", "--version"):
        parser.parse_args(argv)
        return 0
    for stream in (sys.stdout, sys.stderr):   # a path an ASCII stream cannot encode: escaped
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:
        handler.addFilter(_redacted)
        handler.addFilter(process.not_after_sigterm)
        handler.addFilter(not_a_one_line_error)
    sys.excepthook = _redacted_traceback
    try:
        if argv[0] in ("run", "demo"):
            return generate(argv[0], argv[1:], demo)
        if argv[0] in views:
            try:
                return views[argv[0]](argv[1:])
            except BrokenPipeError:
                raise
            except OSError as e:   # stdout on a full disk (its files' errors are one-liners)
                if e.filename is not None:
                    raise
                _tell(f"{PROG}: cannot write to stdout ({e})")
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
                return FAILED
        parser.parse_args(argv)  # prints the usage error for an unknown command
    except UsageError as e:
        _tell(redact(f"{PROG}: error: {e}"))
        return USAGE_ERROR
    except LeaseHeld as e:
        _tell(redact(f"{PROG}: busy: {e}"))
        return BUSY
    except LeaseLost as e:  # not a bug: another run broke or took the lease
        _tell(redact(f"{PROG}: lease lost: {first_line(e, 1000)}"))
        return FAILED
    except StorageUnavailable as e:  # not the user's mistake: it may pass
        _tell(redact(f"{PROG}: storage unavailable: {first_line(e, 1000)}"))
        return FAILED
    except TableFormatError as e:  # found while the rows were read, after the run began
        _tell(redact(f"{PROG}: bad table: {first_line(e, 1000)}"))
        return FAILED
    except Terminated as e:
        what = "interrupted" if e.signal_name == "SIGINT" else "terminated"
        if e.complete is not None:   # (the demo's views, or the summary, were left)
            _tell(f"{PROG}: {what} ({e.signal_name}) once the dataset was complete: "
                  f"{e.complete}" + ("; the demo's views may be missing (synanno-datagen "
                                     "preview and inspect --plots draw them)"
                                     if e.views else ""))
        else:
            _tell(f"{PROG}: {what} ({e.signal_name}); run the same command again to finish "
                  "the dataset")
        return e.exit_code
    return USAGE_ERROR


def entry() -> None:
    """The ``synanno-datagen`` command: ``main``, exiting with its code (1, without a
    traceback, when the reader of its stdout has gone, as ``| head -1`` leaves). SIGTERM and
    SIGINT are ignored from a run's closing line on, while the interpreter shuts down (Python
    puts back the default action of a signal handled by a function before it is done; not of
    an ignored one), so the closing line printed stands; a run a signal stopped ends with its
    closing line's code at once, without the interpreter's shutdown."""
    process.state["keep"] = True
    process.adopt_orphans()
    try:
        code = main()
        if sys.stdout is not None:   # (None: started with stdout closed, ``>&-``)
            sys.stdout.flush()
    except BrokenPipeError:   # stdout's reader left (``| head -1``): no traceback, exit 1
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = FAILED
    except StdoutUnwritable as e:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        print(f"{PROG}: cannot write to stdout ({e.error}); the run's status: {e.status}",
              file=sys.stderr)
        code = FAILED
    for sig in process.STOPPING_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    if process.state["received"]:
        # Beam's threads, grpc's native ones among them, are still running: ending the
        # interpreter under them aborted about one run in eight of multi_threading ('terminate
        # called without an active exception', SIGABRT: exit 134, not the closing line's
        # code). The closing line is out; the process ends as it says, without that shutdown.
        process.stop_child_processes()
        logging.shutdown()
        for stream in (sys.stdout, sys.stderr):
            try:
                if stream is not None:
                    stream.flush()
            except OSError:
                pass
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    sys.exit(main())
