"""FetchSubvolumes: Instance -> Subvolume (source crop and upsampled target labels, (z, y, x))."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

import apache_beam as beam
from apache_beam.metrics import Metrics

from transforms.geometry import crop_box, padding, scale_box, upsample_nearest_zyx
from transforms.records import Instance, Subvolume
from transforms.volumes import VolumeSpec, open_volume, read_padded_zyx


@dataclass(frozen=True)
class FetchConfig:
    source: VolumeSpec
    target: VolumeSpec
    crop_size_xyz: Tuple[int, int, int]
    scale_xyz: Tuple[int, int, int]
    pad_value: int


def fetch_subvolume(instance: Instance, source_cv, target_cv, config: FetchConfig) -> Subvolume:
    """Read and pad both crops of one instance; labels upsampled to the source grid."""
    target_box = crop_box(instance.center_xyz, config.crop_size_xyz)
    source_box = scale_box(target_box, config.scale_xyz)
    source_zyx = read_padded_zyx(source_cv, source_box, config.source.bounds, config.pad_value,
                                 "uint8")
    labels_zyx = read_padded_zyx(target_cv, target_box, config.target.bounds, 0,
                                 config.target.dtype)
    return Subvolume(
        instance=instance, target_box=target_box, source_box=source_box,
        target_padding_xyz=padding(target_box, config.target.bounds),
        source_padding_xyz=padding(source_box, config.source.bounds),
        source_zyx=source_zyx,
        labels_zyx=upsample_nearest_zyx(labels_zyx, config.scale_xyz),
    )


class FetchSubvolumeFn(beam.DoFn):
    """Instance -> Subvolume. One CloudVolume per volume per worker, opened in setup()."""

    def __init__(self, config: FetchConfig):
        self._config = config
        self._source = self._target = None
        self._fetched = Metrics.counter("synanno", "instances_fetched")

    def setup(self):
        self._source = open_volume(self._config.source.url, self._config.source.mip)
        self._target = open_volume(self._config.target.url, self._config.target.mip)

    def process(self, instance: Instance):
        subvolume = fetch_subvolume(instance, self._source, self._target, self._config)
        self._fetched.inc()
        yield subvolume


class FetchSubvolumes(beam.PTransform):
    """Instances -> outputs ``ok`` (Subvolumes) and ``failed`` (Beam's (element, error) pairs)."""

    def __init__(self, config: FetchConfig):
        super().__init__()
        self._config = config

    def expand(self, instances):
        out = instances | "Fetch" >> beam.ParDo(FetchSubvolumeFn(self._config)) \
            .with_exception_handling(use_subprocess=False)
        return {"ok": out.good, "failed": out.bad}
