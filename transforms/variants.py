"""MakeVariants: attach each variant's seed slices to a cleaned Subvolume (see transforms.seeds)."""
from __future__ import annotations

import apache_beam as beam

from synanno_datagen.transforms.records import Subvolume
from synanno_datagen.transforms.seeds import SeedModel, variant_seed_slices


class MakeVariantFn(beam.DoFn):
    """Subvolume (with target_zyx) -> the same Subvolume with ``seed_slices`` for K variants."""

    def __init__(self, run_seed: int, n_variants: int, model: SeedModel):
        self._run_seed = run_seed
        self._n_variants = n_variants
        self._model = model

    def process(self, subvolume: Subvolume):
        subvolume.seed_slices = variant_seed_slices(
            subvolume.target_zyx, run_seed=self._run_seed,
            instance_id=subvolume.instance.instance_id, n_variants=self._n_variants,
            model=self._model)
        yield subvolume


class MakeVariants(beam.PTransform):
    """Subvolumes -> outputs ``ok`` (with seed slices) and ``failed`` (exceptions)."""

    def __init__(self, run_seed: int, n_variants: int, model: SeedModel):
        super().__init__()
        self._fn = MakeVariantFn(run_seed, n_variants, model)

    def expand(self, subvolumes):
        out = subvolumes | "Variants" >> beam.ParDo(self._fn).with_exception_handling(
            use_subprocess=False)
        return {"ok": out.good, "failed": out.bad}
