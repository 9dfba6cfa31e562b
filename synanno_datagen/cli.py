"""``synanno-datagen``: the command line. Thin: parse, run, summarise.

Usage errors print one line and exit with code 2 before any work starts; a run that finds another
run writing its output directory prints one line and exits with code 3. ``run`` and ``demo`` end
with one JSON line on stdout (pipeline.monitoring), whatever happened.
"""
from __future__ import annotations

import argparse
import atexit
import functools
import logging
import os
import signal
import sys
import threading
import time
from contextlib import contextmanager, nullcontext, redirect_stdout
from typing import List, Optional, Sequence

from synanno_datagen import __version__
from synanno_datagen.beam_errors import error_summary, not_a_one_line_error, unwrapped
from synanno_datagen.errors import (ConfigError, LeaseHeld, LeaseLost, StorageUnavailable,
                                    Terminated, UsageError, first_line, redact)
from synanno_datagen.layout import DEAD_LETTER, TFRECORD
from synanno_datagen.pipeline.options import UsageParser, run_parser
from synanno_datagen.pipeline.progress import DEFAULT_INTERVAL_S, ProgressPrinter, runs_in_process
from synanno_datagen.pipeline.table_resolution import nm_text
from synanno_datagen.reading.commands import add_commands as add_view_commands
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


def _not_after_sigterm(record: logging.LogRecord) -> bool:
    """A logging filter: after SIGTERM or SIGINT, no error records of the steps it stopped
    (Beam logs each with its traceback); the run ends with its own one line."""
    return not (_sigterm["received"] and record.levelno >= logging.ERROR)


def _thread_error_hook(previous):
    """threading.excepthook: after SIGTERM or SIGINT, nothing for the threads it stopped, nor
    ever for a DirectRunner worker process that such a signal ended ('Worker subprocess exited
    with return code -15': a Ctrl-C reaches the workers too, maybe before the run's handler
    has seen it); else ``previous``."""
    stopped = tuple(f"exited with return code -{int(s)}" for s in _STOPPING_SIGNALS)

    def hook(args) -> None:
        if not _sigterm["received"] and not str(args.exc_value).endswith(stopped):
            previous(args)

    return hook


def _redacted_traceback(kind, value, tb) -> None:
    """sys.excepthook: an uncaught exception's traceback, as Python prints it, without URL
    passwords (errors.redact)."""
    import traceback

    sys.stderr.write(redact("".join(traceback.format_exception(kind, value, tb))))


def summary(manifest: dict, output_dir: str) -> str:
    """A short human summary of a finished run."""
    counts = manifest["counts"]
    incremental = manifest.get("incremental")
    lines = [
        f"rows read {counts['rows_read']}, instances selected {counts['instances_selected']}, "
        f"written {counts['instances_written']}, variants {counts['variants_written']}",
    ]
    requested = manifest["config"].get("num_instances")
    held = incremental.get("instances_before", 0) if incremental else 0
    usable = held + counts["instances_selected"]
    if requested is not None and usable < requested:
        lines.append(f"warning: --num-instances {requested} is more than the "
                     f"{usable} usable instances in the table; took them all")
    if incremental and incremental.get("replaces"):
        lines.append(f"new dataset: the generation config differs from "
                     f"{incremental['replaces']}'s, so {incremental['run_dir']} starts a fresh "
                     "one (LATEST points at it; earlier runs stay)")
    if incremental and counts["instances_written"] == 0:
        full = requested is not None and held >= requested
        tried = counts["instances_selected"]
        lines.append(f"nothing new: {incremental['run_dir']} adds no instance (" + (
            f"the {tried} tried all failed: see failures)" if tried else
            f"the dataset holds {held}, --num-instances {requested})" if full else
            "every usable row of the table is in the dataset or remembered as failed)"))
    failures = counts["failures"]
    lines.append("failures: " + (", ".join(f"{r} {n}" for r, n in failures.items()) or "none"))
    if not incremental and counts["instances_written"] == 0 and counts["rows_read"]:
        lines.append(f"warning: no instance written from {counts['rows_read']} rows (see "
                     f"failures; {output_dir.rstrip('/')}/{DEAD_LETTER} says why, row by row)")
    outside = failures.get("outside_volume", 0)
    given = manifest["config"].get("coordinate_resolution_nm_xyz")
    nm = nm_text(given) if given else ""
    from_table = manifest.get("table", {}).get("coordinate_resolution_from")
    if from_table:
        lines.append(f"coordinates: {nm} nm per table unit, as the table's pandas attrs "
                     "declare (dataframe_resolution)")
    if outside and outside >= 0.9 * counts["rows_read"]:
        if not given:
            advice = ("if the table's coordinates are not in target voxels (nm, say), pass "
                      "--coordinate-resolution X Y Z (the table's units in nm)")
        elif from_table:
            advice = (f"check the table's dataframe_resolution {nm} (its pandas attrs), and "
                      "that the table's points are in this volume")
        else:
            advice = (f"check --coordinate-resolution {nm} (the table's units in nm), and that "
                      "the table's points are in this volume")
        target = manifest.get("volumes", {}).get("target", {})
        offset = target.get("voxel_offset_xyz")
        if offset and any(offset):
            units = "target voxels"
            if given and target.get("resolution_nm_xyz"):   # the offset in the table's units
                offset = [o * r / g for o, r, g in zip(offset, target["resolution_nm_xyz"],
                                                       given)]
                units = "the table's units"
            advice += ("; points are absolute, not relative to the volume's corner: add the "
                       f"target's voxel_offset ({' '.join(f'{v:g}' for v in offset)} in "
                       f"{units}) to those that are")
        lines.append(f"warning: {outside} of {counts['rows_read']} rows are outside the volume: "
                     + advice)
    from synanno_datagen.reading.inspection import remembered_line

    if remembered_line(counts):
        lines.append(remembered_line(counts))
    tfrecord = TFRECORD in manifest["config"]["formats"]
    for name, split in manifest["splits"].items():
        lines.append(f"split {name}: {split['instances']} instances, " + (
            f"{split['records']} records in {split['shards']} shards" if tfrecord else
            f"{split['shards']} index shards"))   # npy only: the shards are the index's
    lines.append(f"manifest: {output_dir.rstrip('/')}/manifest.json")
    return "\n".join(lines)


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
    status, code, error = monitoring.FAILED, FAILED, None
    _sigterm.update(received=None, closed=False)
    # (a signal the process was started ignoring stays ignored: a shell's background job
    # ignores SIGINT, the Ctrl-C meant for the foreground)
    previous_handlers = {sig: signal.signal(sig, _terminate) for sig in _STOPPING_SIGNALS
                         if signal.getsignal(sig) is not signal.SIG_IGN}
    root_level = None   # the root logger's level before --quiet raised it
    previous_hook, threading.excepthook = threading.excepthook, \
        _thread_error_hook(threading.excepthook)
    try:
        output, rest = output_parser().parse_known_args(argv)
        if not 0 < output.progress_interval < float("inf"):
            raise ConfigError(f"--progress-interval {output.progress_interval:g}: must be "
                              "positive")
        if output.quiet:
            root_level = logging.getLogger().level
            logging.getLogger().setLevel(logging.ERROR)
        manifest = _generate(command, rest, demo_parser, output)
        status, code = (monitoring.OK if manifest is not None else monitoring.SUBMITTED), 0
        return 0
    except LeaseHeld as e:
        status, code, error = monitoring.BUSY, BUSY, str(e)
        raise
    except UsageError as e:
        status, code, error = monitoring.REFUSED, USAGE_ERROR, str(e)
        raise
    except BaseException as e:
        if _sigterm["received"]:   # raised in a step, Beam wraps it in its RuntimeError
            stopped = Terminated(_sigterm["received"])
            code, error = stopped.exit_code, stopped.summary()
            raise stopped from None
        known = unwrapped(e)
        error = error_summary(known)
        if known is not e:
            raise known from None
        raise
    finally:
        _sigterm["closed"] = True   # the closing line stands: a signal from here on is ignored
        _restore_stdout()           # (a signal may have cut stdout_to_stderr's own restore)
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
            if not _sigterm["keep"]:   # (the command keeps them while the interpreter ends)
                for sig, handler in previous_handlers.items():
                    signal.signal(sig, handler)
                threading.excepthook = previous_hook
                if root_level is not None:   # (--quiet: a caller's own logging as it was)
                    logging.getLogger().setLevel(root_level)


_STOPPING_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# received: the signal's name once one arrived (what a step raised then is Beam's wrapping);
# closed: the closing line is out; keep: the handlers stay until the process exits (entry())
_sigterm = {"received": None, "closed": False, "keep": False}


def _terminate(signum, frame) -> None:
    """SIGTERM or SIGINT: stop the run once. A second one while it unwinds is ignored (raised
    inside Beam's shutdown it left a worker and the process running), and so is one after the
    closing line (Beam's threads take most of a second to end: the process would end with the
    signal's code after a line saying ok)."""
    if _sigterm["received"] or _sigterm["closed"]:
        return
    _sigterm["received"] = signal.Signals(signum).name
    _stop_child_processes()
    threading.Thread(target=_keep_stopping_workers, daemon=True).start()
    raise Terminated(_sigterm["received"])


def _keep_stopping_workers(seconds: float = 10.0, every_s: float = 0.2) -> None:
    """After the signal, stop worker processes that were still starting when it came (a fork
    not yet running Beam's worker, one Beam starts while it shuts down): Beam's shutdown would
    wait for them for good, and one left running holds the command's stderr. In the command
    (``entry``), until the process exits (a loaded machine's shutdown may start one long
    after the signal); in-process, for ``seconds``, or until a new run starts."""
    end = time.monotonic() + seconds
    while _sigterm["received"] and (_sigterm["keep"] or time.monotonic() < end):
        time.sleep(every_s)
        _stop_child_processes()


_BEAM_WORKER = "apache_beam.runners.worker.sdk_worker_main"


def _stop_child_processes() -> None:
    """SIGTERM to the DirectRunner's worker processes (``multi_processing`` mode) among those
    this one started, and theirs: Beam's shutdown waits for each to exit, which a worker busy
    with a bundle never does. Other processes (a program running the CLI in-process may have
    its own) are left alone."""
    for pid in descendants(os.getpid()):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().decode(errors="replace").split("\0")
            if any(_BEAM_WORKER in arg for arg in argv):
                os.kill(pid, signal.SIGTERM)
        except OSError:
            pass   # (ended meanwhile)


def descendants(pid: int) -> List[int]:
    """The processes ``pid`` started, and theirs (Linux's /proc; elsewhere none)."""
    children: dict = {}
    try:
        entries = [e.name for e in os.scandir("/proc") if e.name.isdigit()]
    except OSError:
        return []
    for name in entries:
        try:
            with open(f"/proc/{name}/stat") as f:
                ppid = int(f.read().rpartition(")")[2].split()[1])
        except (OSError, ValueError, IndexError):
            continue   # (ended meanwhile)
        children.setdefault(ppid, []).append(int(name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _generate(command: str, argv: List[str], demo_parser, output) -> Optional[dict]:
    """Run (or demo) and print the summary; the manifest, or None if the job was submitted."""
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
    with stdout_to_stderr():   # stdout holds only our lines (libraries print there)
        if command == "demo":
            manifest = run_demo(args.output_dir, beam_args, progress)
        else:
            from synanno_datagen.pipeline.run import run

            manifest = run(argv, progress)
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


@contextmanager
def stdout_to_stderr():
    """What is printed on stdout meanwhile goes to stderr: Python's ``print`` (cloud-volume's
    'File Read Error' lines) and, through file descriptor 1, worker processes started meanwhile
    (``multi_processing``) and native code; the closing JSON line stays alone on stdout. Nothing
    is moved when either stream is closed (then descriptor 2 may be any file opened since)."""
    if sys.stdout is None or sys.stderr is None:
        yield
        return
    sys.stdout.flush()
    try:
        with _signals_held():   # (one delivered as the hold ends is raised inside the try)
            try:
                _moved["saved"] = os.dup(1)
                os.dup2(2, 1)
            except OSError:   # a descriptor Python does not know is closed: print only
                _moved["saved"] = None
        with redirect_stdout(sys.stderr):
            yield
    finally:
        _restore_stdout()


_moved = {"saved": None}   # descriptor 1 as it was, while stdout_to_stderr has moved it


def _restore_stdout() -> None:
    """Put descriptor 1 back if it is moved (also before the closing line, whatever a signal
    interrupted)."""
    with _signals_held():
        saved, _moved["saved"] = _moved["saved"], None
        if saved is not None:
            os.dup2(saved, 1)
            os.close(saved)


@contextmanager
def _signals_held():
    """SIGTERM and SIGINT wait (their handlers run once this ends)."""
    held = signal.pthread_sigmask(signal.SIG_BLOCK, _STOPPING_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)


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
        handler.addFilter(_not_after_sigterm)
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
        _tell(f"{PROG}: {what} ({e.signal_name}); run the same command again to finish the "
              "dataset")
        return e.exit_code
    return USAGE_ERROR


def _adopt_orphans() -> None:
    """Linux: a process orphaned below this one is adopted by it, not by init (a child
    subreaper), so ``_stop_child_processes`` still finds it. Beam starts each worker through
    ``/bin/sh -c`` (dash forks the worker): a shell stopped just after it forked leaves its
    worker orphaned, holding this command's stderr until it gives up on the run (two minutes),
    then printing tracebacks there. Elsewhere, nothing."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except (ImportError, OSError, AttributeError):   # (no ctypes; a libc without prctl)
        pass


_PR_SET_CHILD_SUBREAPER = 36   # <linux/prctl.h>


def entry() -> None:
    """The ``synanno-datagen`` command: ``main``, exiting with its code (1, without a
    traceback, when the reader of its stdout has gone, as ``| head -1`` leaves). SIGTERM and
    SIGINT are ignored from a run's closing line on, while the interpreter shuts down (Python
    puts back the default action of a signal handled by a function before it is done; not of
    an ignored one), so the closing line printed stands."""
    _sigterm["keep"] = True
    _adopt_orphans()
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
    for sig in _STOPPING_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    if _sigterm["received"]:   # once Beam's threads have ended, the last straggler
        atexit.register(_stop_child_processes)
    sys.exit(code)


if __name__ == "__main__":
    sys.exit(main())
