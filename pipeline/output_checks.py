"""The output directory, checked before any work: where it is, that it can be written, and that
it holds nothing a run would replace but a dataset of this tool (its manifest.json, or an
unfinished run's UNFINISHED) made with the same config. Each failure is one ConfigError line
naming --output-dir."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

from synanno_datagen.errors import ConfigError, first_line, storage_unavailable, transient
from synanno_datagen.layout import (DATASET_ENTRIES, LATEST, MANIFEST, UNFINISHED, is_manifest,
                                     join)


WRITE_PROBE = "_write_probe"   # written and removed under a gs:// --output-dir by the check


def to_output_dir(location: str) -> str:
    """``--output-dir`` as the run names it: a URL without trailing slashes, or an absolute
    path (also for a ``file:///`` URL). Refuses a URL naming no bucket (``gs://`` from an unset
    variable would otherwise be the local folder ``gs:``) and glob characters (Beam's
    FileSystems match the names of files they remove or rename as patterns)."""
    if not location.strip():
        raise ConfigError(f"--output-dir {location!r}: empty (an unset variable?); give the "
                          "dataset's directory")
    from synanno_datagen.transforms.files import storage_location

    try:
        location = storage_location(location)
    except ValueError as e:
        raise ConfigError(f"--output-dir {location!r}: {e}") from None
    if "://" in location:
        scheme, _, rest = location.partition("://")
        if not rest.split("/", 1)[0]:
            raise ConfigError(f"--output-dir {location!r}: no bucket after {scheme}://; write "
                              f"{scheme}://BUCKET/FOLDER")
        out = location.rstrip("/")
    else:
        out = os.path.abspath(os.path.expanduser(location))
    if any(c in out for c in "*?["):
        raise ConfigError(f"--output-dir {location}: holds a glob character (* ? [), which "
                          "would make the files a rerun replaces patterns; choose a name "
                          "without them")
    return out


def _storage_cause(error: BaseException) -> BaseException:
    """The storage client's own error behind Beam's wrapping (BeamIOError keeps it in
    ``exception_details``; others chain it)."""
    if transient(error):
        return error
    details = getattr(error, "exception_details", None)
    if isinstance(details, dict) and details:
        return next(iter(details.values()))
    return error.__cause__ or error.__context__ or error


def check_writable(output_dir: str) -> None:
    """Refuse an output location we cannot write, creating nothing there.

    Local: the nearest existing ancestor must be a writable directory. Other filesystems
    (gs://): a probe object is written and deleted under the output prefix.
    """
    if "://" not in output_dir:
        existing = Path(output_dir)
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
            what = "is not a directory" if not existing.is_dir() else "is not writable"
            raise ConfigError(f"--output-dir {output_dir}: {existing} {what}; choose a directory "
                              "you can write")
        return
    from synanno_datagen.transforms.files import (bucket_path, delete_file, object_holding,
                                                  write_bytes)

    # One name: what a run killed between writing and deleting it leaves, the next one removes
    probe = join(output_dir, WRITE_PROBE)
    try:
        above = object_holding(probe)   # the folder itself, then each one holding it
        if above is not None:
            where = "" if above == bucket_path(output_dir) else f": {above}"
            raise ConfigError(f"--output-dir {output_dir}{where} is an object, not a "
                              "folder; choose a folder (a prefix) for the dataset")
        try:
            write_bytes(probe, b"synanno-datagen write probe")
        except BaseException:   # refused, or stopped (SIGTERM) after the object was made
            try:
                delete_file(probe)
            except Exception:  # noqa: BLE001 - the write's error is the one to tell
                pass
            raise
        delete_file(probe)   # by its name: another run checking at once may have deleted it
    except ConfigError:
        raise
    except Exception as e:
        cause = _storage_cause(e)
        if transient(cause):
            raise storage_unavailable(f"--output-dir {output_dir}", cause) from None
        raise ConfigError(f"--output-dir {output_dir}: cannot write there ({type(e).__name__}: "
                          f"{first_line(e, 200)}); check the bucket name and your write "
                          "access") from None


def is_incremental_root(output_dir: str) -> bool:
    """Whether ``output_dir`` is an incremental root already (it holds LATEST)."""
    from apache_beam.io.filesystems import FileSystems

    return FileSystems.exists(join(output_dir, LATEST))


def check_output_dir(output_dir: str, options: dict, overwrite: bool) -> None:
    """Refuse to mix with a finished dataset made with other ``options`` (its manifest's
    ``config``) unless ``overwrite``."""
    if is_incremental_root(output_dir):
        raise ConfigError(f"--output-dir {output_dir} is an incremental root ({LATEST}): add "
                          "--incremental to extend it, or choose another directory (a one-off "
                          "dataset there would hide its runs from every reader)")
    if overwrite:
        return
    previous = own_manifest(join(output_dir, MANIFEST))
    if previous is None:   # no dataset of ours: nothing else of those names either
        check_no_foreign_entries(output_dir)
        return
    changed = config_changes(previous["config"], options)
    if changed:
        raise ConfigError(f"--output-dir {output_dir} holds a dataset made with a different "
                          f"config ({changed}); choose another directory or pass --overwrite")


def config_changes(then: dict, now: dict, shown: int = 3) -> str:
    """The options (manifest ``config`` keys) whose values differ, as ``key: THEN then, NOW
    now``; empty when none does. ``output_dir`` is where a dataset was made, not an option: a
    dataset moved elsewhere is rerun there."""
    keys = sorted(k for k in then.keys() | now.keys()
                  if k != "output_dir" and then.get(k) != now.get(k))
    text = "; ".join(f"{k}: {_shown(then.get(k))} then, {_shown(now.get(k))} now"
                     for k in keys[:shown])
    return text + (f"; and {len(keys) - shown} more" if len(keys) > shown else "")


def _shown(value) -> str:
    return json.dumps(value)[:80]


def check_no_foreign_entries(output_dir: str) -> None:
    """Refuse a directory without a dataset that holds files under the names a run replaces
    (DATASET_ENTRIES), unless an unfinished run of this tool left them (its UNFINISHED)."""
    from apache_beam.io.filesystems import FileSystems

    from synanno_datagen.transforms.files import holds_anything

    if FileSystems.exists(join(output_dir, UNFINISHED)):
        return   # an unfinished run's, however many files it left (nothing is listed)
    if own_manifest(join(output_dir, MANIFEST)) is not None:
        return   # a run of this tool's (an incremental root's run folder LATEST does not name)
    found = [name for name in sorted(DATASET_ENTRIES)
             if holds_anything(join(output_dir, name))]
    if found:
        raise ConfigError(f"--output-dir {output_dir} holds {', '.join(found)} but no dataset of "
                          f"this tool (no {MANIFEST} of its own, no unfinished run's "
                          f"{UNFINISHED}); a run "
                          "would replace them: choose another directory, move them, or pass "
                          "--overwrite")


def own_manifest(path: str) -> Optional[dict]:
    """The manifest at ``path`` if this tool wrote it (layout.is_manifest); None when it is
    absent, unreadable or another tool's."""
    from apache_beam.io.filesystems import FileSystems

    try:
        if not FileSystems.exists(path):
            return None
        with FileSystems.open(path) as f:
            manifest = json.load(f)
    except Exception:  # noqa: BLE001 - unreadable: not known to be ours
        return None
    return manifest if is_manifest(manifest) else None


def check_incremental_root(root: str) -> None:
    """Refuse a root that holds a one-off run's dataset (``manifest.json``): readers take it
    before ``LATEST``, so the runs would stay hidden behind it."""
    from apache_beam.io.filesystems import FileSystems

    if FileSystems.exists(join(root, MANIFEST)):
        raise ConfigError(f"--output-dir {root} holds the dataset of a one-off run "
                          f"({MANIFEST}); an incremental root must be a new directory or one "
                          "written by --incremental runs: choose another directory")
