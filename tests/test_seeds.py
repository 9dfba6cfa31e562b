import json
import os

import numpy as np
import pytest

from synanno_datagen.record_format import seed_mask
from synanno_datagen.transforms.seeds import (
    SeedModel, draw_seed_slices, generator, pick, variant_seed_slices,
)


def _target(depth=16, foreground=range(16)):
    t = np.zeros((depth, 6, 6), np.uint8)
    for z in foreground:
        t[z, 2:4, 2:4] = 1
    return t


def _within(empirical, expected, n):
    """Every frequency within 4.5 binomial standard errors of its expected value."""
    sd = np.sqrt(expected * (1 - expected) / n)
    return np.all(np.abs(empirical - expected) <= 4.5 * sd + 1e-12)


def test_count_law_matches_the_declared_model():
    model = SeedModel(max_seed_slices=3)
    n = 6000
    counts = np.array([len(variant_seed_slices(_target(), run_seed=1, instance_id=i,
                                               n_variants=1, model=model)[0])
                       for i in range(n)])
    empirical = np.bincount(counts, minlength=4)[1:] / n
    expected = model.count_probabilities(16)
    assert np.allclose(expected, [4 / 7, 2 / 7, 1 / 7])
    assert _within(empirical, expected, n)
    assert empirical[0] > empirical[1] > empirical[2]   # favours few


def test_position_law_matches_the_declared_model_and_favours_the_centre():
    model = SeedModel(max_seed_slices=1)
    n = 8000
    z = np.array([variant_seed_slices(_target(), run_seed=3, instance_id=i, n_variants=1,
                                      model=model)[0][0] for i in range(n)])
    empirical = np.bincount(z, minlength=16) / n
    weights = model.position_weights(16, np.arange(16))
    expected = weights / weights.sum()
    assert _within(empirical, expected, n)
    assert empirical[7] + empirical[8] > 3 * (empirical[0] + empirical[15])


def test_seeds_only_on_foreground_slices_without_repeats():
    model = SeedModel(max_seed_slices=3)
    target = _target(foreground=[2, 3, 12])
    for i in range(300):
        for slices in variant_seed_slices(target, run_seed=0, instance_id=i, n_variants=4,
                                          model=model):
            assert 1 <= len(slices) <= 3
            assert set(slices) <= {2, 3, 12}
            assert len(set(slices)) == len(slices) and list(slices) == sorted(slices)


def test_variants_are_distinct_when_possible_and_cover_all_when_few():
    model = SeedModel(max_seed_slices=3)
    for i in range(200):
        v = variant_seed_slices(_target(), run_seed=0, instance_id=i, n_variants=6, model=model)
        assert len(set(v)) == 6
    # One foreground slice: only one possible set, so every variant repeats it.
    one = variant_seed_slices(_target(foreground=[5]), run_seed=0, instance_id=1, n_variants=3,
                              model=model)
    assert one == [(5,), (5,), (5,)]
    # Two slices, M=2: exactly three sets exist ({a}, {b}, {a, b}); four variants use all three.
    two = variant_seed_slices(_target(foreground=[4, 9]), run_seed=0, instance_id=1,
                              n_variants=4, model=SeedModel(max_seed_slices=2))
    assert set(two) == {(4,), (9,), (4, 9)}


def test_same_identity_same_slices_other_seed_other_slices():
    model = SeedModel(max_seed_slices=3)
    a = [variant_seed_slices(_target(), run_seed=0, instance_id=i, n_variants=4, model=model)
         for i in range(50)]
    b = [variant_seed_slices(_target(), run_seed=0, instance_id=i, n_variants=4, model=model)
         for i in range(50)]
    c = [variant_seed_slices(_target(), run_seed=1, instance_id=i, n_variants=4, model=model)
         for i in range(50)]
    assert a == b and a != c


def test_generator_accepts_negative_and_huge_ids():
    assert generator(0, -5, 0).integers(1 << 30) == generator(0, -5, 0).integers(1 << 30)
    generator(0, (1 << 63) - 1, 3).random()


def test_no_two_identities_share_a_generator():
    """numpy splits each seed number into 32-bit words and pads short seeds with zero words:
    [seed, id mod 2**64, variant] made [0, 5, 1] (id 5, variant 1) and [0, 5, 1, 0] (id
    5 + 2**32, variant 0) one generator, and (seed 3 + 9 * 2**32, id 5) one with (seed 3,
    id 9 + 5 * 2**32) (found by review)."""
    identities = [(0, 5 + k * 2**32, v) for k in range(4) for v in range(4)]
    identities += [(s, i, v) for s, i in [(3 + 9 * 2**32, 5), (3, 9 + 5 * 2**32), (3, 9),
                                          (3 + 5 * 2**32, 9), (0, -1), (2**32 - 1, 2**32 - 1)]
                   for v in range(4)]
    identities += [(2**32, 0, 0), (0, 2**32, 0), (1, 0, 0), (0, 0, 0), (2**63 - 1, 2**64 - 1, 0)]
    draws = {generator(*identity).integers(1 << 62) for identity in identities}
    assert len(draws) == len(identities)


def test_seeds_and_ids_below_2_32_keep_their_generators():
    """Records pinned before the fix above (the golden dataset's, its ids below 2**32) are
    unchanged: the generator is numpy's of [seed, id, variant] there."""
    for run_seed, instance_id, variant in [(0, 11, 3), (7, 2**32 - 1, 0), (2**32 - 1, 0, 1)]:
        before = np.random.default_rng([run_seed, instance_id, variant])
        assert generator(run_seed, instance_id, variant).random() == before.random()


def test_seed_mask_zeroes_all_but_seed_slices():
    target = _target(foreground=[1, 2, 3])
    mask = seed_mask(target, (2,))
    assert mask[2].sum() == 4 and mask.sum() == 4 and mask.dtype == np.uint8
    assert target.sum() == 12  # input untouched
    # found by mutation review: keeping the slices between two seeds passed every test
    apart = seed_mask(np.ones((5, 2, 2), np.uint8), (1, 3))
    assert np.unique(np.nonzero(apart)[0]).tolist() == [1, 3] and apart.sum() == 8


def test_draw_needs_foreground():
    with pytest.raises(ValueError, match="no foreground"):
        variant_seed_slices(np.zeros((4, 4, 4), np.uint8), run_seed=0, instance_id=0,
                            n_variants=1, model=SeedModel())
    rng = np.random.default_rng(0)
    assert draw_seed_slices(np.array([3]), 8, SeedModel(), rng) == (3,)


@pytest.mark.parametrize("foreground", [range(16), [5, 6, 7, 8], [3, 9], [12]])
def test_inclusion_probabilities_sum_to_the_mean_count_and_match_sampled_variants(foreground):
    import synanno_datagen.transforms.seeds as seeds

    model = SeedModel(max_seed_slices=3)
    p = seeds.seed_inclusion_probabilities(model, 16, foreground)
    count_p = model.count_probabilities(len(foreground))
    assert p.shape == (16,) and p.dtype == np.float64
    assert np.isclose(p.sum(), np.dot(np.arange(1, count_p.size + 1), count_p))
    assert np.isclose((p / p.sum()).sum(), 1.0)
    assert np.all(p[[z for z in range(16) if z not in foreground]] == 0)
    assert np.all(p <= 1 + 1e-12)
    # Empirical: the first variant of many instances follows one draw of the law exactly.
    n = 6000
    seen = np.zeros(16)
    for i in range(n):
        seen[list(variant_seed_slices(_target(foreground=foreground), run_seed=7, instance_id=i,
                                      n_variants=1, model=model)[0])] += 1
    assert _within(seen / n, p, n)


def test_inclusion_probabilities_exact_and_estimated_agree(monkeypatch):
    import synanno_datagen.transforms.seeds as seeds

    model = SeedModel(max_seed_slices=3)
    exact = seeds.seed_inclusion_probabilities(model, 16, range(2, 14))
    assert seeds.seed_inclusion_probabilities(model, 16, [12])[12] == 1.0
    monkeypatch.setattr(seeds, "EXACT_STATE_LIMIT", 10)   # force the seeded estimate
    estimate = seeds.seed_inclusion_probabilities(model, 16, range(2, 14), mc_draws=20000)
    assert np.abs(estimate - exact).max() < 0.02
    again = seeds.seed_inclusion_probabilities(model, 16, range(2, 14), mc_draws=20000)
    np.testing.assert_array_equal(estimate, again)          # deterministic


def test_a_seed_model_round_trips_through_its_manifest_entry():
    model = SeedModel(max_seed_slices=5, count_ratio=0.25, position_sigma_frac=0.5)
    entry = json.loads(json.dumps(model.to_manifest()))
    assert SeedModel.from_manifest(entry) == model
    assert type(SeedModel.from_manifest({**entry, "count_ratio": 1}).count_ratio) is float


def test_pick_draws_the_index_rng_choice_draws_from_the_same_stream():
    for seed in range(500):
        weights = np.random.default_rng(10_000 + seed).random(1 + seed % 40)
        p = weights / weights.sum()
        ours, numpys = np.random.default_rng(seed), np.random.default_rng(seed)
        assert [pick(ours, p) for _ in range(4)] == \
            [int(numpys.choice(p.size, p=p)) for _ in range(4)]


def test_seed_slices_are_those_of_the_law_drawn_with_rng_choice():
    """Pinned: the draws of 60 masks x 2 models x 64 variants (many redraws), as the law drew
    them with rng.choice before it computed the law once per instance (records must not
    change)."""
    import hashlib

    digest = hashlib.sha256()
    for inst in range(60):
        rng = np.random.default_rng(inst)
        depth = int(rng.integers(1, 33))
        target = np.zeros((depth, 4, 4), np.uint8)
        target[rng.random(depth) < 0.6, 1, 1] = 1
        if not target.any():
            target[depth // 2, 1, 1] = 1
        for model in (SeedModel(), SeedModel(max_seed_slices=5, count_ratio=0.8,
                                             position_sigma_frac=0.1)):
            digest.update(repr(variant_seed_slices(target, run_seed=7, instance_id=inst * 1000003,
                                                   n_variants=64, model=model)).encode())
    assert digest.hexdigest() == "1b77ef8bf321e37464aa8dd4f0d93bffb04aa615ccef93a5548d2b602a7526b4"


def test_the_estimate_of_a_deep_crops_law_draws_a_bounded_number_of_keys():
    """Found by review (twice): a manifest's max_seed_slices and foreground slices of tens of
    thousands made inspect estimate the law with 20,000 draws of as many picks (hours), then,
    with fewer draws, still 200 draws of as many passes over the slices (a crop of 20,000 slices:
    minutes per index line). An estimate draws one key per slice per draw, and fewer draws for
    a deep crop; small laws keep their 20,000 draws."""
    import synanno_datagen.transforms.seeds as seeds

    assert seeds.estimate_draws(16, 20_000) == 20_000
    assert seeds.estimate_draws(64, 20_000) == 20_000
    assert seeds.estimate_draws(20_000, 20_000) == 250
    assert seeds.estimate_draws(1 << 16, 20_000) == seeds.MC_FEWEST_DRAWS
    for n in (1, 16, 1000, 20_000, 1 << 16):
        assert seeds.estimate_draws(n, 20_000) * n <= max(seeds.MC_WORK_LIMIT,
                                                          seeds.MC_FEWEST_DRAWS * n)
    p = seeds.seed_inclusion_probabilities(SeedModel(max_seed_slices=20_000, count_ratio=1.0),
                                           20_000, range(20_000))
    assert p.shape == (20_000,) and abs(p.sum() - 10_000.5) < 1000   # E[count], 1..20,000 alike
    assert np.all((p >= 0) & (p <= 1))
    p = seeds.seed_inclusion_probabilities(SeedModel(max_seed_slices=1, count_ratio=1.0,
                                                     position_sigma_frac=0.05), 2048,
                                           range(2048))
    assert p.sum() == pytest.approx(1.0) and 1000 < int(np.argmax(p)) < 1048   # central


def test_the_estimate_of_a_law_follows_draw_seed_slices_where_weights_are_steep(monkeypatch):
    """The estimate takes every draw's slices at once by their keys: the same law as
    draw_seed_slices, which picks them one at a time (checked against the exact law where
    weights differ by orders of magnitude)."""
    import synanno_datagen.transforms.seeds as seeds

    model = SeedModel(max_seed_slices=4, count_ratio=2.0, position_sigma_frac=0.08)
    foreground = [0, 1, 2, 5, 7, 8, 9, 11, 15]
    exact = seeds.seed_inclusion_probabilities(model, 16, foreground)
    monkeypatch.setattr(seeds, "EXACT_STATE_LIMIT", 10)
    estimate = seeds.seed_inclusion_probabilities(model, 16, foreground, mc_draws=20_000)
    assert np.abs(estimate - exact).max() < 0.02


def test_pick_never_takes_a_slice_of_weight_zero_even_for_a_uniform_of_zero():
    """rng.choice searches right of the uniform: a double of exactly 0.0 (or one equal to a
    cumulative sum) must not land on a slice already drawn (weight 0)."""
    from synanno_datagen.transforms.seeds import pick

    class Fixed:
        def __init__(self, u):
            self.u = u

        def random(self):
            return self.u

    p = np.array([0.0, 0.0, 0.25, 0.75])
    assert pick(Fixed(0.0), p) == 2
    assert pick(Fixed(0.25), p) == 3


_LAW_BITS = """
import sys
import numpy as np
from synanno_datagen.transforms.seeds import SeedModel
laws = []
for depth in range(1, 130):
    laws.append(SeedModel().position_weights(depth, np.arange(depth)).tobytes().hex())
for ratio in (0.3, 0.5, 0.7, 0.123):
    laws.append(SeedModel(max_seed_slices=24, count_ratio=ratio)
                .count_probabilities(24).tobytes().hex())
sys.stdout.write(chr(10).join(laws))
"""


def test_the_law_has_the_same_bits_without_the_cpus_vector_paths():
    """numpy's exp and power differ in the last bit with and without AVX-512 for most depths;
    a worker on another CPU must draw from the very same law (NPY_DISABLE_CPU_FEATURES makes
    numpy here take the paths a CPU without those features takes)."""
    import subprocess
    import sys

    from numpy._core import _multiarray_umath as umath
    found = [f for f in umath.__cpu_dispatch__ if umath.__cpu_features__.get(f)]
    if not found:
        pytest.skip("this CPU has no features beyond numpy's baseline to turn off")
    runs = [subprocess.run([sys.executable, "-c", _LAW_BITS], capture_output=True, text=True,
                           check=True, env={**os.environ, "NPY_DISABLE_CPU_FEATURES": off})
            for off in ("", " ".join(found))]
    assert runs[0].stdout.count("\n") == 132
    assert runs[0].stdout == runs[1].stdout


def test_the_laws_weights_are_the_exact_values_rounded_once():
    model = SeedModel(max_seed_slices=4, count_ratio=0.7)
    # exp(-0.5 * ((5 - 7.5) / 4) ** 2) = 0.8225775623986645897...: np.exp with AVX-512 gives
    # the float below it (0x1.a528e2e1d9f09p-1)
    assert model.position_weights(16, [5])[0] == float.fromhex("0x1.a528e2e1d9f0ap-1")
    assert model.position_weights(16, [7, 8]).tolist() == [_gauss(7, 16), _gauss(8, 16)]
    # 0.7 is 0.69999999999999995559...: its powers from that value, each rounded once
    weights = np.array([1.0, 0.7, 0.48999999999999994, 0.3429999999999999])
    assert model.count_probabilities(9).tolist() == (weights / weights.sum()).tolist()


def _gauss(z, depth):
    """The weight at 80 digits, rounded to float64 (sigma = depth / 4)."""
    from decimal import Decimal, localcontext
    with localcontext(prec=80):
        offset = (Decimal(z) - Decimal(depth - 1) / 2) / (Decimal(depth) / 4)
        return float((Decimal(-0.5) * offset ** 2).exp())
