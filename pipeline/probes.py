"""Storage probes, run before any work: can the volumes be read (and how), can the output be
written, does the output directory hold another config's dataset. Each failure is one
ConfigError line naming the flag (the table's probe is pipeline.table_options.describe_table)."""
from __future__ import annotations

import itertools
import json
import os
import time
from pathlib import Path
from typing import Optional

import numpy as np

from synanno_datagen.errors import ConfigError, first_line, storage_unavailable, transient
from synanno_datagen.layout import DATASET_ENTRIES, LATEST, MANIFEST, UNFINISHED, is_manifest
from synanno_datagen.transforms.geometry import nearest_mip
from synanno_datagen.transforms.readers import (
    TENSORSTORE, mip_resolutions, open_reader, read_info,
)
from synanno_datagen.transforms.volumes import BadInfo, NoSuchMip, VolumeSpec, spec_from_info


def to_url(location: str) -> str:
    """A volume location as a cloud-volume URL: plain local paths become file:// URLs."""
    if "://" in location:
        return location
    return "file://" + os.path.abspath(os.path.expanduser(location))


def to_output_dir(location: str) -> str:
    """``--output-dir`` as the run names it: a URL without trailing slashes, or an absolute
    path. Refuses a URL naming no bucket (``gs://`` from an unset variable would otherwise be
    the local folder ``gs:``) and glob characters (Beam's FileSystems match the names of files
    they remove or rename as patterns)."""
    if not location.strip():
        raise ConfigError(f"--output-dir {location!r}: empty (an unset variable?); give the "
                          "dataset's directory")
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


def nearest_source_mip(url: str, target: VolumeSpec, engine: str) -> int:
    volume("--source-url", url, 0, engine)  # a clear error when the info (any scale) is wrong
    try:
        return nearest_mip(target.resolution_nm, mip_resolutions(url, engine))
    except ValueError as e:
        raise ConfigError(f"--source-mip nearest: {e} ({url}); give a mip number") from None


def volume(flag: str, url: str, mip: int, engine: str) -> VolumeSpec:
    """Scale ``mip`` of the volume at ``url``, once its info is complete and ``engine`` opens it
    and can decode its encoding; ConfigError naming ``flag`` otherwise. Every scale of the info
    must be well-formed, not only ``mip`` (``--source-mip nearest`` and readers look at all)."""
    try:
        info = read_info(url, engine, check=True)
        spec = spec_from_info(url, info, mip)
        for other in range(len(info["scales"])):
            spec_from_info(url, info, other)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{flag} {url}: cannot read the volume's info (not JSON: {e}); check "
                          "the URL and the info file") from None
    except NoSuchMip as e:
        raise ConfigError(f"{'--source-mip' if flag == '--source-url' else flag} {mip}: {e}") \
            from None
    except BadInfo as e:
        raise ConfigError(f"{flag} {url}: {e}; the precomputed format requires it, fix the "
                          "info file") from None
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise ConfigError(f"{flag} {url}: cannot read the volume's info "
                          f"({type(e).__name__}: {first[:200]}); check the URL and access") from None
    _check_role(flag, spec)
    if engine == TENSORSTORE and gzip_file_chunks(spec):
        raise ConfigError(f"{flag} {url}: its chunks are stored as .gz files (cloud-volume's "
                          "local gzip layout), which tensorstore does not read; pass "
                          "--volume-reader cloudvolume")
    _check_decodable(flag, spec, engine)
    return spec


def _check_role(flag: str, spec: VolumeSpec) -> None:
    """The dtype and channels each volume's role needs (checked before the engine opens it, whose
    refusal would not say so): raw EM uint8, labels integers, one channel each."""
    if flag == "--source-url" and (spec.dtype != "uint8" or spec.num_channels != 1):
        raise ConfigError(f"--source-url {spec.url}: raw EM must be uint8 with one channel, "
                          f"found {spec.dtype} x {spec.num_channels}")
    if flag == "--target-url" and not spec.dtype.startswith(("uint", "int")):
        raise ConfigError(f"--target-url {spec.url}: labels must be integers, found {spec.dtype}")
    if flag == "--target-url" and spec.num_channels != 1:
        raise ConfigError(f"--target-url {spec.url}: labels must have one channel, found "
                          f"{spec.num_channels}")


def _check_decodable(flag: str, spec: VolumeSpec, engine: str) -> None:
    """Refuse a scale ``engine`` cannot read: tensorstore must open it (it refuses encodings it
    does not know, such as compresso, when opening); cloud-volume decodes with optional codecs,
    so a tiny chunk is encoded and decoded with its encoding."""
    try:
        if engine == TENSORSTORE:
            open_reader(spec.url, spec.mip, engine)
        else:
            from cloudvolume import chunks

            zeros = np.zeros((8, 8, 8, spec.num_channels), spec.dtype)
            try:
                data = chunks.encode(zeros, spec.encoding, block_size=(8, 8, 8))
            except (ImportError, NotImplementedError):
                raise
            except Exception:  # noqa: BLE001 - this dtype cannot be encoded so: decode is moot
                return
            chunks.decode(data, spec.encoding, shape=zeros.shape, dtype=zeros.dtype,
                          block_size=(8, 8, 8))
    except Exception as e:  # noqa: BLE001 - every reason is the user's to fix, in one line
        hint = ("pass --volume-reader cloudvolume (with its codec installed)"
                if engine == TENSORSTORE else "install the codec, or convert the volume")
        raise ConfigError(f"{flag} {spec.url}: {engine} cannot read scale {spec.mip} (encoding "
                          f"{spec.encoding!r}): {type(e).__name__}: {first_line(e, 200)}; "
                          f"{hint}") from None


def gzip_file_chunks(spec: VolumeSpec) -> bool:
    """True when a local volume's scale holds ``*.gz`` chunk files (cloud-volume writes them on
    disk; on buckets the same chunks are plain names with Content-Encoding: gzip)."""
    if not spec.url.startswith("file://"):
        return False
    scale_dir = Path(spec.url[len("file://"):]) / spec.key
    if not scale_dir.is_dir():
        return False
    with os.scandir(scale_dir) as entries:
        return any(e.name.endswith(".gz") for e in itertools.islice(entries, 64))


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
    from apache_beam.io.filesystems import FileSystems

    if "://" not in output_dir:
        existing = Path(output_dir)
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
            what = "is not a directory" if not existing.is_dir() else "is not writable"
            raise ConfigError(f"--output-dir {output_dir}: {existing} {what}; choose a directory "
                              "you can write")
        return
    from synanno_datagen.transforms.files import delete_tree, write_bytes

    probe = FileSystems.join(output_dir, f"_write_probe_{os.getpid()}_{time.time_ns()}")
    try:
        if "/" in output_dir.partition("://")[2].strip("/") and FileSystems.exists(output_dir):
            raise ConfigError(f"--output-dir {output_dir} is an object, not a folder; choose a "
                              "folder (a prefix) for the dataset")
        write_bytes(probe, b"synanno-datagen write probe")
        delete_tree(probe)
    except ConfigError:
        raise
    except Exception as e:
        cause = _storage_cause(e)
        if transient(cause):
            raise storage_unavailable(f"--output-dir {output_dir}", cause) from None
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise ConfigError(f"--output-dir {output_dir}: cannot write there ({type(e).__name__}: "
                          f"{first}); check the bucket name and your write access") from None


def check_output_dir(output_dir: str, options: dict, overwrite: bool) -> None:
    """Refuse to mix with a finished dataset made with other ``options`` (its manifest's
    ``config``) unless ``overwrite``."""
    from apache_beam.io.filesystems import FileSystems

    if FileSystems.exists(FileSystems.join(output_dir, LATEST)):
        raise ConfigError(f"--output-dir {output_dir} is an incremental root ({LATEST}): add "
                          "--incremental to extend it, or choose another directory (a one-off "
                          "dataset there would hide its runs from every reader)")
    if overwrite:
        return
    previous = own_manifest(FileSystems.join(output_dir, MANIFEST))
    if previous is None:   # no dataset of ours: nothing else of those names either
        check_no_foreign_entries(output_dir)
        return
    if previous["config"] != options:
        raise ConfigError(f"--output-dir {output_dir} holds a dataset made with a different "
                          "config; choose another directory or pass --overwrite")


def check_no_foreign_entries(output_dir: str) -> None:
    """Refuse a directory without a dataset that holds files under the names a run replaces
    (DATASET_ENTRIES), unless an unfinished run of this tool left them (its UNFINISHED)."""
    from apache_beam.io.filesystems import FileSystems

    from synanno_datagen.transforms.files import holds_anything

    if FileSystems.exists(FileSystems.join(output_dir, UNFINISHED)):
        return   # an unfinished run's, however many files it left (nothing is listed)
    if own_manifest(FileSystems.join(output_dir, MANIFEST)) is not None:
        return   # a run of this tool's (an incremental root's run folder LATEST does not name)
    found = [name for name in sorted(DATASET_ENTRIES)
             if holds_anything(FileSystems.join(output_dir, name))]
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

    if FileSystems.exists(FileSystems.join(root, MANIFEST)):
        raise ConfigError(f"--output-dir {root} holds the dataset of a one-off run "
                          f"({MANIFEST}); an incremental root must be a new directory or one "
                          "written by --incremental runs: choose another directory")
