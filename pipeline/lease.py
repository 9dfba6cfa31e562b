"""One writer per output directory: a lease object that only one run can create.

``DIR/LEASE`` (DIR is ``--output-dir``: a dataset directory or an incremental root) holds JSON
naming its holder: host, boot id, pid (the command's process, also for ``multi_processing``
runs, whose workers renew the lease under that pid), when that process started (clock ticks
since boot), start and expiry (UTC) and a random token. It is created
only if absent: on gs:// as an object uploaded with ``if_generation_match=0`` (GCS creates it
only when no object of that name exists), locally as a whole file hard-linked to its name (a link
is refused if the name exists; so a run stopped while writing it leaves none). A run that finds a
live lease stops before any work (LeaseHeld: one line, exit code 3).

The holder removes it at the end of the run: the pipeline's last step (pipeline.finish's
FinishRunFn, after the manifest and LATEST, so also on Dataflow, where a template's launcher
exits before the job runs) and, when the run fails in its own process, ``run``. Only the
holder's token removes it, and only the version read.

A killed run leaves it. On the machine that ran it (same host name, boot id and pid namespace) a
lease whose process is gone (no such pid, a zombie, or a process of that pid that started at
another time: the pid was reused) is taken over at once, so rerunning a killed command just
works, unless the run only submitted a job that outlives its process (a remote runner, a
template launch). Elsewhere (a
failed Dataflow job, another machine) it expires ``--lease-hours`` after its start (default 20,
below a nightly schedule's 24, so a failed night does not block the next one), or
``--break-lease`` removes it at once.

A run that is alive keeps its lease: the workers that write (a ``Heartbeat`` in the writing step)
look at it at most every ``--lease-hours``/8 (and every hour at most) and, once less than half of
it is left, push its expiry to ``--lease-hours`` from then, replacing only the version they read.
A lease that is no longer the run's (broken with ``--break-lease``, or expired and taken by
another run) raises LeaseLost in the worker: the run stops writing instead of writing beside
another. The steps that give files their final names look with ``force`` as they start
(transforms.files.before_commit), so a run that stalled past its lease renames nothing over the
files of the run that took it.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime
import errno
import json
import logging
import os
import secrets
import socket
import threading
import time
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

from synanno_datagen.errors import (ConfigError, LeaseHeld, LeaseLost, StorageUnavailable,
                                    first_line, storage_unavailable, transient)
from synanno_datagen.layout import LEASE, join
from synanno_datagen.pipeline.options import DEFAULT_LEASE_HOURS as DEFAULT_HOURS

log = logging.getLogger(__name__)

_TRIES = 3
# Errors of the storage, not of the folder the user chose (a full disk or quota, a failing
# disk, a stale NFS handle, a system out of memory or file handles): the run fails (exit 1) and
# may go once it passes. The rest (no permission, a read-only mount, a path component that is a
# file, a name too long) is the chosen --output-dir's (exit 2).
_STORAGE_TROUBLE = frozenset(getattr(errno, name) for name in (
    "ENOSPC", "EDQUOT", "EIO", "ESTALE", "ENOMEM", "ENOBUFS", "EMFILE", "ENFILE", "EAGAIN")
    if hasattr(errno, name))
_TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


@dataclass(frozen=True)
class Lease:
    """A lease this run holds (plain values: the pipeline's last step releases it)."""

    path: str
    token: str
    host: str
    boot_id: str
    pid: int
    started_utc: str
    expires_utc: str
    process_bound: bool = True   # the run ends with its process (not a submitted job)
    pid_ns: str = ""   # the pid namespace its pid is in ("pid:[4026531836]"; "" if unknown)
    pid_start_ticks: Optional[int] = None   # when pid started (clock ticks since boot; None if
                                            # unknown): a later process reusing pid did not

    def to_json(self) -> bytes:
        return json.dumps({"holder": "synanno-datagen", "host": self.host,
                           "boot_id": self.boot_id, "pid": self.pid, "pid_ns": self.pid_ns,
                           "pid_start_ticks": self.pid_start_ticks,
                           "process_bound": self.process_bound,
                           "started_utc": self.started_utc, "expires_utc": self.expires_utc,
                           "token": self.token}, sort_keys=True).encode("utf-8") + b"\n"


def lease_path(output_dir: str) -> str:
    return join(output_dir, LEASE)


def acquire(output_dir: str, hours: float = DEFAULT_HOURS, break_lease: bool = False,
            process_bound: bool = True) -> Lease:
    """Take the lease on ``output_dir`` or raise LeaseHeld; a stale lease (expired, or of a
    process of this machine that is gone), or any with ``break_lease``, is removed first, with a
    warning naming its holder. ``process_bound`` is False when the run's job outlives this
    process (then its end does not free the lease)."""
    now = time.time()
    lease = Lease(lease_path(output_dir), secrets.token_hex(16), socket.gethostname(),
                  _boot_id(), os.getpid(), _utc(now), _utc(now + hours * 3600), process_bound,
                  _pid_namespace(), _start_ticks(os.getpid()))
    store = _store(lease.path)
    for _ in range(_TRIES):
        try:
            if store.create(lease.to_json()):
                return lease
            held = store.read()
        except Exception as e:  # no access, no bucket, a path component that is a file, ...
            if transient(e):
                raise storage_unavailable(f"--output-dir {output_dir}: taking the run's lease "
                                          f"{lease.path}", e) from None
            cannot = (f"--output-dir {output_dir}: cannot take the run's lease {lease.path} "
                      f"({type(e).__name__}: {first_line(e, 200)})")
            if isinstance(e, OSError) and e.errno in _STORAGE_TROUBLE:
                raise StorageUnavailable(f"{cannot}; try again") from None
            raise ConfigError(cannot) from None
        if held is None:  # removed between our create and read: try again
            continue
        info, version, modified = held
        expires = _expiry(info, modified)
        why = "it expired" if expires <= now else ("its process is gone" if _gone(info)
                                                   else None)
        if why is None and not break_lease:
            raise LeaseHeld(f"--output-dir {output_dir} is being written by another run "
                            f"({holder(info)}, lease expires {_utc(expires)}); wait for it to "
                            "end, or pass --break-lease if it is dead")
        log.warning("removing the lease of %s on %s (%s)", holder(info), output_dir,
                    why or "--break-lease")
        store.remove(version)
    raise LeaseHeld(f"--output-dir {output_dir}: other runs keep taking its lease; try again")


def release(lease: Lease) -> bool:
    """Remove the lease if it is still this run's (same token); True if removed."""
    store = _store(lease.path)
    held = store.read()
    if held is None or held[0].get("token") != lease.token:
        return False
    return store.remove(held[1])


def renew(lease: Lease, hours: float, now: Optional[float] = None) -> Optional[Lease]:
    """Push the lease's expiry to ``hours`` from ``now``, replacing only the version read; the
    renewed Lease, or None when another writer of the lease got in between (read it again).
    Raises LeaseLost when the lease is gone or another run's."""
    store = _store(lease.path)
    held = store.read()
    if held is None or held[0].get("token") != lease.token:
        taker = f" ({holder(held[0])} holds it now)" if held else " (it is gone)"
        raise LeaseLost(f"the lease {lease.path} is no longer this run's{taker}: it was broken "
                        "or it expired; this run stops writing so as not to write beside "
                        "another (raise --lease-hours for runs this long)")
    now = time.time() if now is None else now
    renewed = dataclasses.replace(lease, expires_utc=_utc(now + hours * 3600))
    return renewed if store.replace(renewed.to_json(), held[1]) else None


_BEATS: Dict[str, float] = {}   # lease token -> when this process last looked at it
_BEATS_LOCK = threading.Lock()


@dataclass(frozen=True)
class Heartbeat:
    """Keeps a running job's lease (see the module docstring): ``beat()`` is cheap to call often
    (at the start of every bundle); it reads the lease at most every ``interval_s`` per process
    and renews it once less than half of ``hours`` is left."""

    lease: Lease
    hours: float

    @property
    def interval_s(self) -> float:
        return min(3600.0, self.hours * 3600 / 8)

    def beat(self, now: Optional[float] = None, force: bool = False) -> None:
        """Look at the lease (at most every ``interval_s`` per process, unless ``force``):
        renew it when less than half is left; raise LeaseLost when it is no longer ours."""
        now = time.time() if now is None else now
        with _BEATS_LOCK:
            last = _BEATS.get(self.lease.token)
            if not force and last is not None and now - last < self.interval_s:
                return
            _BEATS[self.lease.token] = now
        for _ in range(_TRIES):
            try:
                held = _store(self.lease.path).read()
                info = held[0] if held else {}
                if held and info.get("token") == self.lease.token and \
                        _expiry(info, held[2]) - now > self.hours * 3600 / 2:
                    return                    # ours, and more than half of it is left
                if renew(self.lease, self.hours, now) is not None:
                    log.info("renewed the lease %s until %s", self.lease.path,
                             _utc(now + self.hours * 3600))
                    return
            except LeaseLost:
                raise
            except Exception as e:  # noqa: BLE001 - storage trouble: the next look, in
                log.warning(          # interval_s, tries again (half the lease is still left)
                    "could not renew the lease %s (%s: %s); trying again later",
                    self.lease.path, type(e).__name__, first_line(e, 200))
                return


def holder(info: dict) -> str:
    if not info.get("host"):
        return "an unreadable lease"
    return f"host {info['host']}, pid {info.get('pid')}, since {info.get('started_utc')}"


def _boot_id() -> str:
    """This boot of this machine (Linux); "" where unknown (then no lease is judged gone)."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


def _pid_namespace() -> str:
    """The pid namespace of this process (Linux: "pid:[4026531836]"); "" where unknown (then no
    lease is judged gone). Containers on one kernel share the boot id, and may share the host
    name, but each has its own pids."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def _gone(info: dict) -> bool:
    """Whether the lease's run was its process, on this machine, in this boot, among this
    process's pids (its pid namespace), and ended: no process has its pid, or a zombie has, or
    one that started at another time than the lease names (its pid was reused)."""
    if not info.get("process_bound") or not _boot_id() or info.get("boot_id") != _boot_id() \
            or info.get("host") != socket.gethostname() or not isinstance(info.get("pid"), int) \
            or not _pid_namespace() or info.get("pid_ns", _pid_namespace()) != _pid_namespace():
        return False   # (no pid_ns at all: written before leases named it, judged as ours)
    try:
        os.kill(info["pid"], 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # another user's process: it exists (its start time tells whose)
        pass
    stat = _stat(info["pid"])
    if stat is None:
        return False
    started = info.get("pid_start_ticks")   # (absent: written before leases named it)
    return stat[0] == "Z" or (isinstance(started, int) and _ticks(stat) not in (None, started))


def _stat(pid: int) -> Optional[list]:
    """The fields of ``/proc/PID/stat`` after the command name (from field 3, the state; the
    name, in parentheses, may hold spaces and parentheses itself); None where unreadable."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rpartition(b")")[2].decode("ascii", "replace").split()
    except OSError:
        return None


def _ticks(stat: list) -> Optional[int]:
    """A process's start time in ``stat`` (field 22: clock ticks since boot)."""
    try:
        return int(stat[22 - 3])
    except (IndexError, ValueError):
        return None


def _start_ticks(pid: int) -> Optional[int]:
    """When process ``pid`` started (Linux: clock ticks since boot); None where unknown."""
    stat = _stat(pid)
    return None if stat is None else _ticks(stat)


def started_epoch(lease: Lease) -> float:
    return _epoch(lease.started_utc)


def _expiry(info: dict, modified: float) -> float:
    """The lease's expiry (epoch seconds); for unreadable content, its write time + default."""
    try:
        return _epoch(info["expires_utc"])
    except (KeyError, TypeError, ValueError):
        return modified + DEFAULT_HOURS * 3600


def _epoch(utc: str) -> float:
    return datetime.datetime.strptime(utc, _TIME_FORMAT).replace(
        tzinfo=datetime.timezone.utc).timestamp()


def _utc(epoch: float) -> str:
    return datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc).strftime(_TIME_FORMAT)


def _parse(data: bytes) -> dict:
    try:
        info = json.loads(data.decode("utf-8"))
    except ValueError:  # UnicodeDecodeError and JSONDecodeError alike
        return {}
    return info if isinstance(info, dict) else {}


def _store(path: str):
    return _GcsLease(path) if path.startswith("gs://") else _LocalLease(path)


class _LocalLease:
    """The lease as a local file; a version is (inode, mtime in ns)."""

    def __init__(self, path: str):
        self._path = path

    def create(self, data: bytes) -> bool:
        """Create the file whole or not at all: written under a name of its own, then hard-linked
        as the lease (``link`` fails if the lease exists); a run stopped while writing leaves no
        empty lease. Where a hard link fails otherwise (no hard links there), ``O_EXCL`` and a
        write."""
        os.makedirs(os.path.dirname(self._path), exist_ok=True)
        fresh = f"{self._path}.{secrets.token_hex(8)}.new"
        try:
            with open(fresh, "xb") as f:
                f.write(data)
            try:
                os.link(fresh, self._path)
            except FileExistsError:
                return False
            except OSError:   # no hard links here (FUSE: EPERM, or ENOSYS on older kernels)
                return self._create_in_place(data)
            return True
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(fresh)

    def _create_in_place(self, data: bytes) -> bool:
        try:
            fd = os.open(self._path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return True

    def read(self) -> Optional[Tuple[dict, tuple, float]]:
        try:
            with open(self._path, "rb") as f:
                st = os.fstat(f.fileno())
                return _parse(f.read()), (st.st_ino, st.st_mtime_ns), st.st_mtime
        except FileNotFoundError:
            return None

    def replace(self, data: bytes, version: tuple) -> bool:
        """Replace the file if it is still ``version`` (checked just before an atomic rename:
        a lease is replaced only by its holder, long before it could expire)."""
        fresh = f"{self._path}.{secrets.token_hex(8)}.new"
        with open(fresh, "wb") as f:
            f.write(data)
        held = self.read()
        if held is None or held[1] != version:
            os.unlink(fresh)
            return False
        os.replace(fresh, self._path)
        return True

    def remove(self, version: tuple) -> bool:
        """Remove the file if it is still ``version``: moved aside first (atomic), put back if
        another run replaced it meanwhile."""
        aside = f"{self._path}.{secrets.token_hex(8)}.removed"
        try:
            os.rename(self._path, aside)
        except FileNotFoundError:
            return False
        st = os.stat(aside)
        if (st.st_ino, st.st_mtime_ns) != version:
            try:
                os.link(aside, self._path)
            except FileExistsError:
                pass
            os.unlink(aside)
            return False
        os.unlink(aside)
        return True


class _GcsLease:
    """The lease as a GCS object; a version is its generation. Uses Beam's GCS client (the
    credentials every other write of the run uses)."""

    def __init__(self, path: str):
        bucket, _, name = path[len("gs://"):].partition("/")
        self._bucket, self._name = bucket, name

    def _blob(self):
        from apache_beam.io.gcp.gcsio import GcsIO

        return GcsIO().client.bucket(self._bucket).blob(self._name)

    def create(self, data: bytes) -> bool:
        from google.api_core.exceptions import PreconditionFailed

        try:
            self._blob().upload_from_string(data, content_type="application/json",
                                            if_generation_match=0)
        except PreconditionFailed:
            return False
        return True

    def read(self) -> Optional[Tuple[dict, int, float]]:
        from apache_beam.io.gcp.gcsio import GcsIO
        from google.api_core.exceptions import NotFound, PreconditionFailed

        blob = GcsIO().client.bucket(self._bucket).get_blob(self._name)
        if blob is None:
            return None
        try:  # this generation's bytes, or None if it was replaced or removed meanwhile
            data = blob.download_as_bytes(if_generation_match=blob.generation)
        except (NotFound, PreconditionFailed):
            return None
        modified = blob.updated.timestamp() if blob.updated else 0.0
        return _parse(data), blob.generation, modified

    def replace(self, data: bytes, generation: int) -> bool:
        """Replace the object if it is still ``generation`` (a GCS precondition)."""
        from google.api_core.exceptions import NotFound, PreconditionFailed

        try:
            self._blob().upload_from_string(data, content_type="application/json",
                                            if_generation_match=generation)
        except (NotFound, PreconditionFailed):
            return False
        return True

    def remove(self, generation: int) -> bool:
        from google.api_core.exceptions import NotFound, PreconditionFailed

        try:
            self._blob().delete(if_generation_match=generation)
        except (NotFound, PreconditionFailed):
            return False
        return True
