"""MakeVariants: each variant's seed slices for a Cleaned crop (see transforms.seeds)."""
from __future__ import annotations

import apache_beam as beam

from synanno_datagen.transforms.dead_letters import guarded_pardo
from synanno_datagen.transforms.records import DEAD, UNEXPECTED_ERROR, Cleaned, Varied
from synanno_datagen.transforms.seeds import SeedModel, variant_seed_slices


class MakeVariantFn(beam.DoFn):
    """Cleaned -> Varied: seed slices (sorted z index tuples) for K variants."""

    def __init__(self, run_seed: int, n_variants: int, model: SeedModel):
        self._run_seed = run_seed
        self._n_variants = n_variants
        self._model = model

    def process(self, cleaned: Cleaned):
        slices = variant_seed_slices(
            cleaned.target_zyx, run_seed=self._run_seed,
            instance_id=cleaned.instance.instance_id, n_variants=self._n_variants,
            model=self._model)
        yield Varied(**cleaned.crop_fields(), target_zyx=cleaned.target_zyx,
                     center_distance_nm=cleaned.center_distance_nm, seed_slices=tuple(slices))


class MakeVariants(beam.PTransform):
    """Cleaned -> outputs ``ok`` (Varied) and ``dead_letter`` (exceptions)."""

    def __init__(self, run_seed: int, n_variants: int, model: SeedModel):
        super().__init__()
        self._fn = MakeVariantFn(run_seed, n_variants, model)

    def expand(self, cleaned):
        ok, dead = guarded_pardo(cleaned, "Variants", self._fn, UNEXPECTED_ERROR, "MakeVariants")
        return {"ok": ok, DEAD: dead}
