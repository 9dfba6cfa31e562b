"""The seed-slice model: which z-slices of a target mask a training input keeps.

The law (recorded in the manifest under ``seed_model``):

- count ``c`` in ``1..m`` with ``m = min(max_seed_slices, slices with foreground)``,
  ``P(c) ∝ count_ratio ** (c - 1)`` (a truncated geometric law: one slice most often);
- positions drawn one after another without repeats among the slices where the target has
  foreground, each draw with probability ``∝ exp(-0.5 * ((z - (depth - 1) / 2) / sigma) ** 2)``
  over the slices not yet drawn, with ``sigma = position_sigma_frac * depth`` (central slices
  favoured).

Randomness comes only from ``generator(run_seed, instance_id, variant)``. Variants of
one instance are distinct slice sets whenever the instance allows: a variant whose set repeats an
earlier variant's is redrawn from its own generator, and after ``MAX_REDRAWS`` failures takes the
first unused set in a fixed enumeration order.
"""
from __future__ import annotations

import decimal
import functools
import itertools
from dataclasses import asdict, dataclass, fields
from typing import List, Optional, Sequence, Tuple

import numpy as np

MAX_REDRAWS = 64
_UINT64 = (1 << 64) - 1
_UINT32 = (1 << 32) - 1
RNG = ("numpy.random.default_rng([seed, instance_id, variant]) when seed and instance_id mod 2**64 "
       "are below 2**32, else numpy.random.default_rng([seed mod 2**32, seed // 2**32, "
       "instance_id mod 2**32, instance_id mod 2**64 // 2**32, variant])")
# ``RNG`` as it read before the second form: what generation hashes hold (pipeline/config.py)
RNG_AS_HASHED = "numpy.random.default_rng([seed, instance_id mod 2**64, variant])"


@dataclass(frozen=True)
class SeedModel:
    """Parameters of the seed-slice law (see module docstring)."""

    max_seed_slices: int = 3
    count_ratio: float = 0.5
    position_sigma_frac: float = 0.25

    def count_probabilities(self, n_available: int) -> np.ndarray:
        """P(c) for c = 1..min(max_seed_slices, n_available), float64, sums to 1 (the same bits
        on every CPU, see ``_exact``'s comment)."""
        m = max(1, min(self.max_seed_slices, n_available))
        weights = np.array([_power(self.count_ratio, k) for k in range(m)], np.float64)
        return weights / weights.sum()

    def position_weights(self, depth: int, candidates_z: np.ndarray) -> np.ndarray:
        """Unnormalised weight of each candidate z index (float64) for a crop of ``depth`` slices
        (the same bits on every CPU, see ``_exact``'s comment)."""
        return np.array([_gaussian(int(z), int(depth), self.position_sigma_frac)
                         for z in np.asarray(candidates_z).ravel()], np.float64)

    def to_manifest(self) -> dict:
        return {
            "name": "truncated_geometric_count+central_gaussian_positions",
            "count": "P(c) ∝ count_ratio**(c-1), c in 1..min(max_seed_slices, foreground slices)",
            "positions": "successive draws without repeats among foreground slices, "
            "P(z) ∝ exp(-0.5*((z-(depth-1)/2)/(position_sigma_frac*depth))**2)",
            "rng": RNG,
            **asdict(self),
        }

    @classmethod
    def from_manifest(cls, entry: dict) -> "SeedModel":
        """The model a manifest's ``seed_model`` (to_manifest) describes (each field cast to
        its default's type)."""
        return cls(**{f.name: type(f.default)(entry[f.name]) for f in fields(cls)})


# The law's weights are computed in decimal arithmetic and rounded once to float64. numpy's
# exp and power take CPU-specific paths (AVX-512 or not) that differ in the last bit for most
# crop depths, which could draw a different slice on another worker; Python's decimal module
# (libmpdec, correctly rounded, integer arithmetic) gives the same bits on every CPU and OS.
def _exact() -> decimal.Context:
    """A context of its own per computation (a shared one's flags would be set by threads at
    once): 40 digits, exponents as wide as decimal allows, rounding half to even."""
    return decimal.Context(prec=40, Emin=decimal.MIN_EMIN, Emax=decimal.MAX_EMAX)


@functools.lru_cache(maxsize=1 << 17)   # (every z of the deepest crop a manifest may declare)
def _gaussian(z: int, depth: int, sigma_frac: float) -> float:
    """exp(-0.5 * ((z - (depth - 1) / 2) / sigma) ** 2), sigma = max(sigma_frac * depth, 1e-9),
    from the exact values of the float inputs, rounded to float64 once."""
    exact = _exact()
    sigma = max(exact.multiply(decimal.Decimal(sigma_frac), depth), decimal.Decimal(1e-9))
    offset = exact.divide(2 * z - depth + 1, exact.multiply(2, sigma))
    return float(exact.exp(exact.multiply(decimal.Decimal("-0.5"), exact.multiply(offset, offset))))


@functools.lru_cache(maxsize=256)
def _power(ratio: float, k: int) -> float:
    """ratio ** k from the float's exact value, rounded to float64 once."""
    return float(_exact().power(decimal.Decimal(ratio), k))


def generator(run_seed: int, instance_id: int, variant: int) -> np.random.Generator:
    """The only source of randomness for one variant of one instance (``RNG``).

    numpy seeds with the 32-bit words of each number, as many as each needs, and pads fewer
    than four words with zeros, so ``[seed, id mod 2**64, variant]`` gave id 5's variant 1 and
    id 5 + 2**32's variant 0 one generator ([0, 5, 1] and [0, 5, 1, 0]). Where seed or id needs
    a second word, both get two: five words, which no shorter list shares, in places of their
    own. Seeds and ids below 2**32 (every record pinned before) keep their generators."""
    uid, seed = int(instance_id) & _UINT64, int(run_seed)
    if uid <= _UINT32 and seed <= _UINT32:
        return np.random.default_rng([seed, uid, int(variant)])
    return np.random.default_rng([seed & _UINT32, seed >> 32, uid & _UINT32, uid >> 32,
                                  int(variant)])


def pick(rng: np.random.Generator, p: np.ndarray) -> int:
    """An index drawn with probabilities ``p`` (float64, sums to 1): ``rng.choice(p.size, p=p)``
    without its checks of ``p``, by its own algorithm (the cumulative sum, divided by its last
    value, searched right of one uniform double), so the same stream gives the same index."""
    cdf = np.cumsum(p)
    cdf /= cdf[-1]
    return int(cdf.searchsorted(rng.random(), side="right"))


def draw_seed_slices(
    foreground_z: np.ndarray, depth: int, model: SeedModel, rng: np.random.Generator,
    law: Optional[Tuple[np.ndarray, np.ndarray]] = None,
) -> Tuple[int, ...]:
    """One draw of the law: sorted z indices, a non-empty subset of ``foreground_z``. ``law``:
    (count probabilities, position weights) of these candidates, when the caller has them."""
    candidates = np.asarray(foreground_z, dtype=np.int64)
    probs, weights = law or (model.count_probabilities(candidates.size),
                             model.position_weights(depth, candidates))
    count = pick(rng, probs) + 1
    chosen = []
    for _ in range(count):
        k = pick(rng, weights / weights.sum())
        chosen.append(int(candidates[k]))
        weights = weights.copy()
        weights[k] = 0.0
    return tuple(sorted(chosen))


def foreground_slices(target_zyx: np.ndarray) -> np.ndarray:
    """int64 (k,): sorted z indices where the (z, y, x) mask has foreground, the slices seeds
    are drawn from (the index lists them as ``foreground_slices``)."""
    return np.flatnonzero(target_zyx.reshape(target_zyx.shape[0], -1).any(axis=1))


def variant_seed_slices(
    target_zyx: np.ndarray, *, run_seed: int, instance_id: int, n_variants: int, model: SeedModel
) -> List[Tuple[int, ...]]:
    """Seed slices for variants ``0..n_variants-1`` of one instance (sorted z index tuples).

    ``target_zyx`` must have foreground on at least one slice.
    """
    depth = target_zyx.shape[0]
    foreground_z = foreground_slices(target_zyx)
    if foreground_z.size == 0:
        raise ValueError("target has no foreground slice")
    # (the variants hold fewer than n_variants distinct sets before the last is drawn)
    n_possible = seed_sets(foreground_z.size, model.max_seed_slices, cap=n_variants)
    law = (model.count_probabilities(foreground_z.size),
           model.position_weights(depth, foreground_z))   # the same for every draw
    result: List[Tuple[int, ...]] = []
    for variant in range(n_variants):
        rng = generator(run_seed, instance_id, variant)
        slices = draw_seed_slices(foreground_z, depth, model, rng, law)
        if len(set(result)) < n_possible:
            redraws = 0
            while slices in result and redraws < MAX_REDRAWS:
                slices = draw_seed_slices(foreground_z, depth, model, rng, law)
                redraws += 1
            if slices in result:
                slices = _first_unused(foreground_z, model.max_seed_slices, result)
        result.append(slices)
    return result


def seed_sets(n: int, max_size: int, cap: Optional[int] = None) -> int:
    """The distinct seed-slice sets of 1 to ``max_size`` slices among ``n`` foreground slices;
    with ``cap``, at most ``cap`` (counted no further: the count of a deep crop's sets has
    thousands of digits)."""
    total, sets_of_size = 0, 1
    for size in range(1, min(n, max_size) + 1):
        sets_of_size = sets_of_size * (n - size + 1) // size   # comb(n, size)
        total += sets_of_size
        if cap is not None and total >= cap:
            return cap
    return total


def _first_unused(foreground_z: np.ndarray, max_size: int, used) -> Tuple[int, ...]:
    for size in range(1, min(foreground_z.size, max_size) + 1):
        for combo in itertools.combinations(foreground_z.tolist(), size):
            if combo not in used:
                return tuple(int(z) for z in combo)
    raise AssertionError("no unused subset although one was counted")


EXACT_STATE_LIMIT = 200_000   # larger laws are estimated (see seed_inclusion_probabilities)
MC_WORK_LIMIT = 5_000_000     # random keys an estimate draws (one per candidate per draw)
MC_FEWEST_DRAWS = 200
_MC_BATCH_KEYS = 1 << 20      # keys drawn at once


def estimate_draws(n_candidates: int, mc_draws: int) -> int:
    """Draws an estimate of a law over ``n_candidates`` slices takes: ``mc_draws``, fewer (not
    under MC_FEWEST_DRAWS) when they would draw more than MC_WORK_LIMIT keys (a deep crop, or a
    hostile manifest: a crop of 65,536 slices, the most a manifest may say, takes 200)."""
    return min(mc_draws, max(MC_FEWEST_DRAWS, MC_WORK_LIMIT // max(1, n_candidates)))


def seed_inclusion_probabilities(model: SeedModel, depth: int, foreground_z: Sequence[int],
                                 *, mc_draws: int = 20_000) -> np.ndarray:
    """P(slice z is a seed slice) under one draw of the law, float64 ``[depth]`` indexed by z.

    Sums to E[count]. Exact: the distribution of the drawn set is carried draw by draw over all
    sets of up to ``m`` foreground slices, and level ``c`` is weighted by P(count = c). When there
    are more than EXACT_STATE_LIMIT such sets it is estimated from ``estimate_draws`` draws of
    the law with a generator seeded by 0 (deterministic): each a count, then that many slices
    taken one at a time with probability proportional to their weights, as ``draw_seed_slices``
    takes them, here drawn at once as the slices of the largest ``log(u) / weight`` (u uniform;
    Efraimidis and Spirakis: the same law, for one key per slice rather than one pass over the
    slices per pick). Variants' distinctness redraws are not part of one draw and not modelled
    here.
    """
    candidates = np.asarray(sorted(int(z) for z in foreground_z), dtype=np.int64)
    if candidates.size == 0:
        raise ValueError("no foreground slice to draw from")
    count_p = model.count_probabilities(candidates.size)
    out = np.zeros(depth, dtype=np.float64)
    if seed_sets(candidates.size, count_p.size, cap=EXACT_STATE_LIMIT + 1) > EXACT_STATE_LIMIT:
        draws = estimate_draws(candidates.size, mc_draws)
        chosen = _estimated_picks(count_p, model.position_weights(depth, candidates), draws)
        out[candidates] = chosen / draws
        return out
    weights = model.position_weights(depth, candidates)
    level = {(): 1.0}                       # drawn set (sorted candidate positions) -> probability
    for c in range(1, count_p.size + 1):
        following = {}
        for drawn, p in level.items():
            free = np.ones(candidates.size, bool)
            free[list(drawn)] = False
            step = np.where(free, weights, 0.0)
            step = step / step.sum()
            for k in np.flatnonzero(free):
                key = tuple(sorted(drawn + (int(k),)))
                following[key] = following.get(key, 0.0) + p * step[k]
        level = following
        for drawn, p in level.items():
            out[candidates[list(drawn)]] += count_p[c - 1] * p
    return out


def _estimated_picks(count_p: np.ndarray, weights: np.ndarray, draws: int) -> np.ndarray:
    """How often each candidate is picked in ``draws`` draws of the law (counts from
    ``count_p``; candidates picked one at a time in proportion to ``weights``, drawn at once by
    their keys, see seed_inclusion_probabilities), int64, one per weight; seeded by 0."""
    rng = np.random.default_rng(0)
    n = weights.size
    picked = np.zeros(n, np.int64)
    batch = max(1, _MC_BATCH_KEYS // n)
    for start in range(0, draws, batch):
        size = min(batch, draws - start)
        counts = rng.choice(count_p.size, size=size, p=count_p) + 1
        with np.errstate(divide="ignore"):   # a weight of 0 is never picked before others
            keys = np.log(rng.random((size, n))) / weights
        order = np.argsort(-keys, axis=1, kind="stable")
        picked += np.bincount(order[np.arange(n) < counts[:, None]], minlength=n)
    return picked
