"""How a run of the command stops: SIGTERM and SIGINT, the DirectRunner's worker processes they
leave, and stdout moved onto stderr while the pipeline runs (Linux's /proc and prctl; elsewhere
the signals only). No Beam here: the run takes its signals before it imports Beam.
"""
from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from contextlib import contextmanager, redirect_stdout
from typing import Callable, List

from synanno_datagen.errors import Terminated

STOPPING_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# received: the signal's name once one arrived (what a step raised then is Beam's wrapping);
# closed: the closing line is out; keep: the handlers stay until the process exits (cli.entry)
state = {"received": None, "closed": False, "keep": False}


def take_signals() -> Callable[[], None]:
    """A run starts: ``terminate`` handles SIGTERM and SIGINT, ``thread_error_hook`` wraps
    threading.excepthook. Returns what puts back the handlers and hook found."""
    state.update(received=None, closed=False)
    # (a signal the process was started ignoring stays ignored: a shell's background job
    # ignores SIGINT, the Ctrl-C meant for the foreground)
    previous_handlers = {sig: signal.signal(sig, terminate) for sig in STOPPING_SIGNALS
                         if signal.getsignal(sig) is not signal.SIG_IGN}
    previous_hook, threading.excepthook = threading.excepthook, \
        thread_error_hook(threading.excepthook)
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    previous_fd = signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
    over = threading.Event()   # this run's handlers are put back: its signals are not sent on
    sender = threading.Thread(target=_to_the_main_thread, daemon=True, name="synanno-signals",
                              args=(read_end, threading.main_thread().ident, over))
    sender.start()

    def put_back() -> None:
        over.set()
        for sig, handler in previous_handlers.items():
            signal.signal(sig, handler)
        threading.excepthook = previous_hook
        signal.set_wakeup_fd(previous_fd)
        os.close(write_end)   # the thread reads the end of the pipe, closes it and ends:
        sender.join(timeout=5)   # done when this returns (a caller counting descriptors saw
        #                          the read end open after one run, closed after the next)

    return put_back


def _to_the_main_thread(read_end: int, main_thread: int, over: threading.Event,
                        every_s: float = 0.1) -> None:
    """Send a stopping signal on to the main thread until its handler has run there.

    The kernel hands a signal sent to the process (a group's, ``timeout``'s, systemd's) to any
    thread that does not block it. Python runs the handler on the main thread, but only when
    that thread runs Python code: one waiting for good (the DirectRunner's ``multi_processing``
    mode waits, without a timeout, on bundles of the workers the same signal killed) waited on,
    the run hanging, its lease held. Each signal's number arrives here through the wakeup
    descriptor, from whichever thread took it; one sent to the main thread wakes it. ``over``:
    set as the run's handlers are put back (a signal the run had handled, sent on after it,
    stopped the next run of a program calling the command twice)."""
    with os.fdopen(read_end, "rb", buffering=0) as wakeups:
        while numbers := wakeups.read(64):
            for number in set(numbers):
                time.sleep(every_s)   # (if the main thread took it, its handler has run)
                if not (state["received"] or state["closed"] or over.is_set()) and \
                        number in {int(s) for s in STOPPING_SIGNALS}:
                    signal.pthread_kill(main_thread, number)


def not_after_sigterm(record: logging.LogRecord) -> bool:
    """A logging filter: after SIGTERM or SIGINT, no error records of the steps it stopped
    (Beam logs each with its traceback); the run ends with its own one line."""
    return not (state["received"] and record.levelno >= logging.ERROR)


def thread_error_hook(previous):
    """threading.excepthook: after SIGTERM or SIGINT, nothing for the threads it stopped, nor
    ever for a DirectRunner worker process that such a signal ended ('Worker subprocess exited
    with return code -15': a Ctrl-C reaches the workers too, maybe before the run's handler
    has seen it); else ``previous``."""
    stopped = tuple(f"exited with return code -{int(s)}" for s in STOPPING_SIGNALS)

    def hook(args) -> None:
        if not state["received"] and not str(args.exc_value).endswith(stopped):
            previous(args)

    return hook


def terminate(signum, frame) -> None:
    """SIGTERM or SIGINT: stop the run once. A second one while it unwinds is ignored (raised
    inside Beam's shutdown it left a worker and the process running), and so is one after the
    closing line (Beam's threads take most of a second to end: the process would end with the
    signal's code after a line saying ok)."""
    if state["received"] or state["closed"]:
        return
    state["received"] = signal.Signals(signum).name
    stop_child_processes()
    threading.Thread(target=keep_stopping_workers, daemon=True).start()
    raise Terminated(state["received"])


def keep_stopping_workers(seconds: float = 10.0, every_s: float = 0.2) -> None:
    """After the signal, stop worker processes that were still starting when it came (a fork
    not yet running Beam's worker, one Beam starts while it shuts down): Beam's shutdown would
    wait for them for good, and one left running holds the command's stderr. In the command
    (``entry``), until the process exits (a loaded machine's shutdown may start one long
    after the signal); in-process, for ``seconds``, or until a new run starts."""
    end = time.monotonic() + seconds
    while state["received"] and (state["keep"] or time.monotonic() < end):
        time.sleep(every_s)
        stop_child_processes()


BEAM_WORKER = "apache_beam.runners.worker.sdk_worker_main"


def stop_child_processes() -> None:
    """SIGTERM to the DirectRunner's worker processes (``multi_processing`` mode) among those
    this one started, and theirs: Beam's shutdown waits for each to exit, which a worker busy
    with a bundle never does. Other processes (a program running the CLI in-process may have
    its own) are left alone."""
    for pid in descendants(os.getpid()):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().decode(errors="replace").split("\0")
            if any(BEAM_WORKER in arg for arg in argv):
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


def adopt_orphans() -> None:
    """Linux: a process orphaned below this one is adopted by it, not by init (a child
    subreaper), so ``stop_child_processes`` still finds it. Beam starts each worker through
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
        restore_stdout()


_moved = {"saved": None}   # descriptor 1 as it was, while stdout_to_stderr has moved it


def restore_stdout() -> None:
    """Put descriptor 1 back if it is moved (also before the closing line, whatever a signal
    interrupted). The saved descriptor is let go only once it is back: the hold keeps signals
    off this thread, but another (Beam's) may take one, and its handler then raises here."""
    with _signals_held():
        saved = _moved["saved"]
        if saved is not None:
            os.dup2(saved, 1)
            _moved["saved"] = None
            os.close(saved)


@contextmanager
def _signals_held():
    """SIGTERM and SIGINT sent to this thread wait (their handlers run once this ends); one the
    kernel hands to another thread is not held (its handler still runs on the main thread)."""
    held = signal.pthread_sigmask(signal.SIG_BLOCK, STOPPING_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)
