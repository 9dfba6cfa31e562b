"""Volume probes, run before any work: can the volumes be read, and how. Each failure is one
ConfigError line naming the flag (the table's probe is pipeline.table_options.describe_table,
the output directory's pipeline.output_checks)."""
from __future__ import annotations

import itertools
import json
import logging
import os
from pathlib import Path
from typing import Optional

import numpy as np

from synanno_datagen.errors import LITERAL_SCHEMES, ConfigError, first_line, redact
from synanno_datagen.layout import file_url_path
from synanno_datagen.transforms.geometry import nearest_mip
from synanno_datagen.transforms.readers import (
    TENSORSTORE, mip_resolutions, open_reader, read_info, scale_url,
)
from synanno_datagen.transforms.volumes import BadInfo, NoSuchMip, VolumeSpec, spec_from_info

log = logging.getLogger(__name__)


def to_url(flag: str, location: str) -> str:
    """A volume location as a URL both engines read alike: a plain local path, and any file URL
    (``FILE://localhost/...``, percent-escapes), becomes ``file://`` and the absolute path (its
    optional ``precomputed://`` prefix kept); other URLs as they are. ConfigError naming
    ``flag`` for a file URL naming no local path, and for a query string or fragment in a URL
    that would take it as one (not ``file://`` or ``gs://``: '?' and '#' are in names there),
    its values not shown: credentials come from the environment."""
    prefix = "precomputed://" if location.startswith("precomputed://") else ""
    rest = location[len(prefix):]
    scheme = rest.partition("://")[0].lower() if "://" in rest else ""
    if scheme and scheme not in LITERAL_SCHEMES and ("?" in rest or "#" in rest):
        raise ConfigError(f"{flag} {redact(location)}: a volume URL takes no query string or "
                          "fragment (a token there would be sent with a '/' appended and "
                          "written where the URL is); give the volume's folder alone: "
                          "credentials come from the environment (Google application default "
                          "credentials or GOOGLE_APPLICATION_CREDENTIALS, cloud-volume's "
                          "~/.cloudvolume/secrets/)")
    if scheme and scheme != "file":
        return location
    try:
        local = file_url_path(rest)
    except ValueError as e:
        raise ConfigError(f"{flag} {location!r}: {e}") from None
    return prefix + "file://" + os.path.abspath(os.path.expanduser(local))


def nearest_source_mip(url: str, target: VolumeSpec, engine: str) -> int:
    volume("--source-url", url, 0, engine)  # a clear error when the info (any scale) is wrong
    resolutions = mip_resolutions(url, engine)
    try:
        return nearest_mip(target.resolution_nm_xyz, resolutions)
    except ValueError as e:
        mips = ", ".join("x".join(f"{r:g}" for r in xyz) for xyz in resolutions)
        raise ConfigError(f"--source-mip nearest: {e} (the source's mips: {mips} nm, {url}); "
                          "check that the two volumes are of one dataset: each axis of the "
                          "target's resolution must be a whole multiple of the source's") \
            from None


def _info_advice(url: str, engine: str, error: Exception) -> str:
    """What to do about a volume URL whose info does not read (``error``): give the volume's
    folder when the URL names its info file or, the info not found, one of its scales' folders
    (the folder above holds an info), else check the URL and access."""
    path = url.rstrip("/")
    if path.endswith("/info"):
        return f"give the volume's folder, the one holding its info file: {path[:-len('/info')]}"
    parent, _, name = path.rpartition("/")
    not_found = isinstance(error, (FileNotFoundError, NotADirectoryError)) or \
        type(error).__name__ == "InfoUnavailableError"   # cloud-volume's
    if not_found and "://" in url and parent.partition("://")[2]:
        try:
            keys = [scale.get("key") for scale in read_info(parent, engine, check=True)["scales"]]
        except Exception:  # noqa: BLE001 - no volume above either: the plain advice
            keys = []
        if name in keys:
            return f"{path} is one scale's folder of the volume at {parent}: give that"
    return "check the URL and access"


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
        raise ConfigError(f"{flag} {url}: cannot read the volume's info "
                          f"({type(e).__name__}: {first_line(e, 200)}); "
                          f"{_info_advice(url, engine, e)}") from None
    _check_keys(flag, url, info, engine)
    _check_role(flag, spec)
    suffix = compressed_chunk_suffix(spec) if engine == TENSORSTORE else None
    if suffix:
        raise ConfigError(f"{flag} {url}: its chunks are stored as {suffix} files "
                          "(cloud-volume's local compressed layout), which tensorstore does not "
                          "read; pass --volume-reader cloudvolume")
    if engine != TENSORSTORE:
        _check_int32_bounds(flag, spec)
    _check_decodable(flag, spec, engine)
    return spec


def _check_keys(flag: str, url: str, info: dict, engine: str) -> None:
    """Every scale's key a relative path that stays under the volume's root (see
    ``readers.scale_url``): an absolute key, or one naming a scheme, would have the engines read
    different places (tensorstore none, cloud-volume any file on the disk). A key climbing with
    '..' is read by tensorstore only: cloud-volume joins it to the URL as text, which no GCS
    object is named (every chunk absent), and on a disk follows links tensorstore does not."""
    for mip, scale in enumerate(info["scales"]):
        key = str(scale["key"])
        try:
            scale_url(url, key)
        except ValueError as e:
            raise ConfigError(f"{flag} {url}: scale {mip} has key {key!r}: {e}; fix the info "
                              "file") from None
        if engine != TENSORSTORE and ".." in key.split("/"):
            raise ConfigError(f"{flag} {url}: scale {mip} has key {key!r}, which climbs with "
                              "'..': cloud-volume joins it to the URL as text (no GCS object "
                              "has such a name, so every chunk would read as absent); pass "
                              "--volume-reader tensorstore, which resolves it")


def _check_int32_bounds(flag: str, spec: VolumeSpec) -> None:
    """cloud-volume holds a scale's bounds as int32 (each read fails past them)."""
    if any(not -2**31 <= v < 2**31 for v in spec.bounds.start_xyz + spec.bounds.stop_xyz):
        raise ConfigError(f"{flag} {spec.url}: scale {spec.mip} spans "
                          f"{spec.bounds.to_list()}; cloud-volume reads voxels -2**31 to "
                          "2**31 - 1 on each axis: pass --volume-reader tensorstore")


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
    if flag == "--target-url" and spec.encoding == "jpeg":
        raise ConfigError(f"--target-url {spec.url}: a jpeg-encoded volume (raw EM?) cannot hold "
                          "labels (JPEG is lossy); give the synapse labels' volume")
    if flag == "--target-url" and spec.layer_type == "image":
        log.warning("--target-url %s: its info says type 'image', not 'segmentation': check that "
                    "it holds the synapse labels", spec.url)


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
        if engine != TENSORSTORE:
            hint, reason = "install the codec, or convert the volume", first_line(e, 200)
        elif spec.encoding in TENSORSTORE_ENCODINGS:
            hint, reason = "fix the info file", tensorstore_reason(e)
        else:
            hint = "pass --volume-reader cloudvolume (with its codec installed)"
            reason = tensorstore_reason(e)
        raise ConfigError(f"{flag} {spec.url}: {engine} cannot read scale {spec.mip} (encoding "
                          f"{spec.encoding!r}): {type(e).__name__}: {reason}; {hint}") from None


TENSORSTORE_ENCODINGS = ("raw", "jpeg", "png", "compressed_segmentation")  # a refusal of these
# is the info's fault, not the codec's


def tensorstore_reason(error: BaseException, limit: int = 240) -> str:
    """A tensorstore error's reason, for one line: without the spec it appends
    (``[tensorstore_spec=...]``) and, when longer than ``limit``, its end (the reason comes
    last, after the context: "Error opening ...: Error reading ...: <reason>")."""
    text = first_line(error, 100_000).split(" [tensorstore_spec=", 1)[0]
    return text if len(text) <= limit else "..." + text[-limit:]


# The suffixes cloud-files gives compressed files on disk (gzip, brotli, zstd, bzip2, xz).
COMPRESSED_SUFFIXES = (".gz", ".br", ".zstd", ".bz2", ".xz")


def compressed_chunk_suffix(spec: VolumeSpec) -> Optional[str]:
    """The suffix (``.gz``, ``.br``, ...) of a local volume's compressed chunk files, None when
    its scale holds none among its first entries: cloud-volume writes them on disk (on buckets
    the same chunks are plain names with a Content-Encoding), and tensorstore, which reads only
    the plain names, would take every chunk for an absent one."""
    if not spec.url.startswith("file://"):
        return None
    scale_dir = Path(spec.url[len("file://"):]) / spec.key
    if not scale_dir.is_dir():
        return None
    with os.scandir(scale_dir) as entries:
        return next((suffix for e in itertools.islice(entries, 64)
                     for suffix in COMPRESSED_SUFFIXES if e.name.endswith(suffix)), None)
