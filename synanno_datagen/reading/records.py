"""The one record decoder: TFRecord framing (CRC-checked) over any file a dataset opens (local
or gs://, streamed; gzip framing by the file's .gz name), and
tf.train.Example -> numpy, in either record layout (``variants_of`` turns an instance record into
its variants).

Arrays come back as read-only uint8 (z, y, x) views of the record's bytes, shaped by its
``shape`` feature; number features as lists (scalars for ``instance_id`` and ``variant``), a
feature a newer writer added as its values (bytes, ints or floats).
"""
from __future__ import annotations

from typing import Iterable, Iterator, Optional, Sequence

import crc32c
import numpy as np

from synanno_datagen.errors import DatasetError, first_line
from synanno_datagen.layout import PROTOBUF_MESSAGE_MOST
from synanno_datagen.record_format import FEATURES, example_pb2, seed_mask

# Arrays of the record's shape, and the features of one number (given as a number, not a list).
ARRAYS = tuple(f["name"] for f in FEATURES if f["shape"] == "shape")
SCALARS = tuple(f["name"] for f in FEATURES if f["shape"] == [])
# What a training sample needs, in either record layout.
SAMPLE_FEATURES = ("source", "target", "seed_target", "instance_id", "variant", "seed_slices",
                   "seed_slice_counts")


def masked_crc32c(data: bytes) -> int:
    """TFRecord's masked CRC32C of ``data`` (the format's checksum of a length and of a record;
    the same as Beam's writer computes)."""
    crc = crc32c.crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _record_length(stream) -> Optional[int]:
    """The length of the next record of an open TFRecord file, checked against its CRC (TFRecord
    framing: length uint64, its masked CRC32C, data, the data's masked CRC32C); None at the
    end of the file."""
    import struct

    header = stream.read(12)
    if not header:
        return None
    if len(header) < 12:
        raise ValueError("the file ends inside a record's length")
    length, mask = struct.unpack("<QI", header)
    if masked_crc32c(header[:8]) != mask:
        raise ValueError("a record's length fails its CRC")
    return length


def iter_serialized(stream, max_length: Optional[int] = None) -> Iterator[bytes]:
    """The serialized records of an open TFRecord file, in order; ValueError for a record
    longer than ``max_length`` before its data is read (a damaged or hostile length would
    otherwise have its whole stream read into memory)."""
    import struct

    while (length := _record_length(stream)) is not None:
        if max_length is not None and length > max_length:
            raise ValueError(f"a record of {length} bytes, more than a record of this dataset "
                             f"holds ({max_length})")
        data, footer = stream.read(length), stream.read(4)
        if len(data) < length or len(footer) < 4:
            raise ValueError(f"Not a valid TFRecord. Fewer than {length + 4} bytes")
        if masked_crc32c(data) != struct.unpack("<I", footer)[0]:
            raise ValueError("Not a valid TFRecord. Mismatch of data mask")
        yield data


def skip_serialized(stream, n: int) -> int:
    """Move an open, uncompressed TFRecord file past its next ``n`` records without reading
    their data: each length is read and checked against its CRC, the data and its CRC are
    seeked over. Returns the records skipped (fewer at the end of the file)."""
    import io

    for skipped in range(n):
        length = _record_length(stream)
        if length is None:
            return skipped
        stream.seek(length + 4, io.SEEK_CUR)
    return n


def max_record_bytes(manifest: dict) -> int:
    """The most bytes a record of the dataset can hold: three arrays of its ``shape_zyx`` (source,
    target, a seed mask) and room for its other features (every variant's seed slices, points,
    boxes); never more than one protobuf message holds (2 GiB), whatever a manifest says."""
    depth, height, width = manifest["arrays"]["shape_zyx"]
    variants = manifest["config"]["variants"]
    return min(3 * depth * height * width + 16 * variants * depth + (1 << 20),
               PROTOBUF_MESSAGE_MOST)


def decode(serialized: bytes, keys: Optional[Iterable[str]] = None) -> dict:
    """One tf.train.Example -> {feature: value} for ``keys`` (default: every feature)."""
    example = example_pb2().Example.FromString(serialized)
    feature = example.features.feature
    shape = tuple(int(v) for v in feature["shape"].int64_list.value)
    out = {}
    for key in (feature.keys() if keys is None else keys):
        if key not in feature:
            continue
        value = feature[key]
        kind = value.WhichOneof("kind")
        if key in ARRAYS:
            out[key] = np.frombuffer(value.bytes_list.value[0], np.uint8).reshape(shape)
        elif kind == "bytes_list":   # a feature of a newer writer: its bytes as they are
            out[key] = list(value.bytes_list.value)
        else:
            numbers = [int(v) for v in value.int64_list.value] if kind == "int64_list" \
                else list(value.float_list.value)
            out[key] = numbers[0] if key in SCALARS else numbers
    return out


def check_record(record: dict, shape_zyx: Sequence[int], variants: int) -> dict:
    """``record`` (decoded) when it is one of a dataset of arrays ``shape_zyx`` and ``variants``
    variants per instance, else ValueError: an array of another shape (even of as many voxels),
    a seed slice outside the crop, seed slice counts that are not one of at least one slice per
    variant adding up to the slices, a variant number outside 0..variants-1. Only the features
    decoded are checked. (A record from storage can hold any of these with valid CRCs: read
    unchecked, it gave a variant all the seed slices, a slice -1 as the last one, or arrays of
    the record's own shape.)"""
    for key in ARRAYS:
        if key in record and record[key].shape != tuple(shape_zyx):
            raise ValueError(f"its {key} has shape {list(record[key].shape)}, the manifest's "
                             f"arrays {list(shape_zyx)}")
    slices, counts = record.get("seed_slices", []), record.get("seed_slice_counts")
    if not all(0 <= z < shape_zyx[0] for z in slices):
        raise ValueError(f"a seed slice outside the crop's {shape_zyx[0]} slices "
                         f"({str(slices)[:60]})")
    if counts is not None and (len(counts) != variants or min(counts, default=1) < 1
                               or sum(counts) != len(slices)):
        raise ValueError(f"seed_slice_counts {str(counts)[:60]} are not {variants} variants' "
                         f"counts of the {len(slices)} seed slices")
    if "variant" in record and not 0 <= record["variant"] < variants:
        raise ValueError(f"variant {record['variant']} is not one of the manifest's {variants}")
    return record


def read_records(dataset, tfrecord_file: dict, keys: Optional[Iterable[str]] = None,
                 skip: int = 0) -> Iterator[dict]:
    """Decoded records of one TFRecord shard (a manifest file entry) of ``dataset``, but for its
    first ``skip`` records (counted, not decoded; in an uncompressed shard seeked over, their
    data unread). DatasetError, naming the shard, for a record that does not read (a failed
    CRC, a cut frame) or is not one of the dataset's (``check_record``) or, once the shard is
    read to its end, a shard holding other than the manifest's number of records."""
    from synanno_datagen.reading.dataset import DAMAGED

    keys = None if keys is None else tuple(keys)
    path, count = dataset.path(tfrecord_file["path"]), 0
    shape_zyx, variants = dataset.manifest["arrays"]["shape_zyx"], dataset.variants
    gzip = tfrecord_file["path"].endswith(".gz")
    try:
        with dataset.open(tfrecord_file["path"], gzip=gzip) as stream:
            if skip and not gzip:   # seek over the records before: a gzip stream cannot
                while count < skip and skip_serialized(stream, 1):
                    count += 1   # one at a time: a damaged one is named by its number
            for serialized in iter_serialized(stream, max_record_bytes(dataset.manifest)):
                record = check_record(decode(serialized, keys), shape_zyx, variants) \
                    if count >= skip else None
                count += 1
                if record is not None:
                    yield record
    except Exception as e:  # noqa: BLE001 - whatever the file or a record does: one line
        import gzip as gzip_files
        import zlib

        why = first_line(e, 200)
        if isinstance(e, FileNotFoundError) and count == 0:   # (opened after the listing)
            raise DatasetError(f"{path}: it is missing, the manifest lists it; {DAMAGED}") from None
        # the gzip stream itself (a CRC, a cut, a bad code): no record to name
        where = ("does not decompress" if gzip and isinstance(
            e, (zlib.error, EOFError, gzip_files.BadGzipFile))
                 else f"record {count + 1} does not read")
        raise DatasetError(f"{path}: {where} ({type(e).__name__}: {why}); {DAMAGED}") from None
    if "records" in tfrecord_file and count != tfrecord_file["records"]:
        raise DatasetError(f"{path}: {count} records, the manifest says "
                           f"{tfrecord_file['records']}; {DAMAGED}")


def variants_of(record: dict) -> Iterator[dict]:
    """The variants of one decoded record, each {instance_id, variant, source, target,
    seed_target, seed_slices}: an ``instance`` record gives all of its variants (the seed mask is
    the target on the variant's slices), a ``variant`` record gives itself."""
    if "seed_slice_counts" not in record:
        yield record
        return
    start = 0
    for variant, count in enumerate(record["seed_slice_counts"]):
        slices = record["seed_slices"][start:start + count]
        start += count
        yield {"instance_id": record["instance_id"], "variant": variant,
               "source": record["source"], "target": record["target"],
               "seed_target": seed_mask(record["target"], slices), "seed_slices": slices}
