"""A vectorised genetic search over genomes: one generation is a pure function, a run is one `lax.scan`.

Per generation (population mu, children lambda, fitness lower-is-better):
  1. parents by size-k tournament on fitness (two per child);
  2. uniform crossover with probability `p_crossover` (else the child copies its first parent);
  3. mutation: each categorical gene entry is resampled with probability `p_mutate` (orders from S3's prior),
     `u` and `relax` get Gaussian noise per entry with probability `p_mutate_continuous`;
  4. budget repair (model and joint modes): while the cost (or NFE) is over budget, a random active position is
     downgraded to a cheaper model or skipped; while under 0.9 budget, a random position is upgraded; a child still
     over budget after `repair_iters` moves gets fitness +inf (dropped);
  5. (mu + lambda) truncation: the best mu of parents and children survive.
Fitness is any function `Genome[P] -> float[P]` (e.g. the predictor under `vmap`); NaN counts as +inf.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from omsjax import checks
from omsjax.search import encoding
from omsjax.search.encoding import Genome
from omsjax.search.space import SearchSpace

__all__ = ["GAConfig", "GAState", "repair", "within_budget", "mutate", "crossover", "children", "init", "step", "run"]

BUDGET_KINDS = ("cost", "nfe")


@dataclasses.dataclass(frozen=True)
class GAConfig:
    """Static settings of the genetic search (hashable); see the module docstring for the generation."""

    pop_size: int = 64  # the population kept from generation to generation
    num_children: int = 64  # children made per generation
    tournament: int = 2  # the size k of the tournament that picks each parent
    p_crossover: float = 0.5  # the probability of a uniform crossover (else the child copies its first parent)
    p_mutate: float = 0.1  # the probability that a categorical gene entry is resampled
    p_mutate_continuous: float = 0.3  # the probability that an entry of `u` or `relax` gets Gaussian noise
    sigma_u: float = 0.3  # that noise's standard deviation on the time logits `u`
    sigma_relax: float = 0.03  # and on the relaxation values
    budget_kind: str = "cost"  # what the budget bounds: "cost" (the sum of latencies) or "nfe" (model calls)
    repair_iters: int = 32  # moves that repair a child over budget before it is dropped (fitness +inf)

    def __post_init__(self):
        check_positive_ints(self, ("pop_size", "num_children", "tournament", "repair_iters"))
        for name in ("p_crossover", "p_mutate", "p_mutate_continuous"):
            v = getattr(self, name)
            if not (checks.is_real(v) and 0.0 <= v <= 1.0):
                raise ValueError(f"GAConfig.{name} must be a probability in [0, 1], got {v!r}")
        for name in ("sigma_u", "sigma_relax"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"GAConfig.{name} must be >= 0, got {getattr(self, name)!r}")
        if self.budget_kind not in BUDGET_KINDS:
            raise ValueError(f"GAConfig.budget_kind must be one of {BUDGET_KINDS}, got {self.budget_kind!r}")


def check_positive_ints(config, names) -> None:
    """Raise ValueError naming the first field of `config` in `names` that is not an int >= 1."""
    for name in names:
        checks.positive_int(f"{type(config).__name__}.{name}", getattr(config, name))


class GAState(NamedTuple):
    population: Genome  # [mu, ...]
    fitness: jax.Array  # float[mu], ascending (best first)
    key: jax.Array
    generation: jax.Array  # int32 scalar


def _measure(space: SearchSpace, config: GAConfig, g: Genome) -> jax.Array:
    f = jnp.result_type(float)
    if config.budget_kind == "nfe":
        return encoding.nfe(space, g).astype(f)
    return encoding.cost(space, g)


def within_budget(space: SearchSpace, config: GAConfig, g: Genome, budget) -> jax.Array:
    """True when the genome's cost (or NFE) is at most `budget` (always true in solver mode: its NFE is fixed)."""
    if not space.searches_models:
        return jnp.ones((), bool)
    return _measure(space, config, g) <= budget * (1 + 1e-9)


def _pick(key, mask):
    """A uniformly random index where `mask` is true (undefined, and unused, when none is)."""
    return jax.random.categorical(key, jnp.where(mask, 0.0, -jnp.inf))


def repair(space: SearchSpace, config: GAConfig, g: Genome, key: jax.Array, budget) -> Genome:
    """Move one genome's cost (or NFE) toward [0.9 budget, budget] by random model downgrades and upgrades
    (model and joint modes; the identity in solver mode)."""
    if not space.searches_models:
        return g
    f = jnp.result_type(float)
    Z = space.num_models
    lat = jnp.asarray(space.latencies + (0.0,), f)  # the skip model costs nothing
    choices = jnp.arange(Z + 1, dtype=jnp.int32)

    def body(_, carry):
        g, key = carry
        key, k_pos, k_new = jax.random.split(key, 3)
        m = _measure(space, config, g)
        over, under = m > budget, m < 0.9 * budget
        cur = lat[g.model]  # [N]
        if config.budget_kind == "nfe":
            down_opts = choices[None, :] == Z  # reduce the NFE: skip
            up_opts = jnp.broadcast_to(choices[None, :] < Z, (space.num_positions, Z + 1))
            up_opts = up_opts & (g.model == Z)[:, None]  # raise it: un-skip
        else:
            down_opts = lat[None, :] < cur[:, None]
            up_opts = lat[None, :] > cur[:, None]
        down_pos, up_pos = jnp.any(down_opts, 1) & (g.model != Z), jnp.any(up_opts, 1)
        pos = jnp.where(over, _pick(k_pos, down_pos), _pick(k_pos, up_pos))
        opts = jnp.where(over, down_opts[pos], up_opts[pos])
        new = _pick(k_new, opts)
        can = jnp.where(over, jnp.any(down_pos), jnp.any(up_pos)) & (over | under)
        model = jnp.where(can, g.model.at[pos].set(new.astype(g.model.dtype)), g.model)
        g2 = g._replace(model=model)
        # An upgrade that overshoots the budget is undone (the next iteration would only bounce back).
        keep = ~under | (_measure(space, config, g2) <= budget)
        return jax.tree.map(lambda a, b: jnp.where(keep, a, b), g2, g), key

    g, _ = jax.lax.fori_loop(0, config.repair_iters, body, (g, key))
    return g


def _sample_like(space: SearchSpace, key: jax.Array, g: Genome) -> Genome:
    """Fresh random values for every categorical gene entry of one genome (same shapes)."""
    f = jnp.result_type(float)
    card = encoding.gene_cardinalities(space)
    keys = dict(zip(card, jax.random.split(key, len(card)), strict=True))
    out = {}
    for name, n in card.items():
        shape = jnp.shape(getattr(g, name))
        if name == "order":
            prior = jnp.asarray(encoding.ORDER_PRIOR[: space.max_order], f)
            out[name] = 1 + jax.random.categorical(keys[name], jnp.log(prior / prior.sum()), shape=shape)
        else:
            out[name] = jax.random.randint(keys[name], shape, 0, n)
    return g._replace(**{k: v.astype(jnp.int32) for k, v in out.items()})


def mutate(space: SearchSpace, config: GAConfig, g: Genome, key: jax.Array) -> Genome:
    """Categorical resampling with probability `p_mutate` per entry; Gaussian steps on `u` and `relax`."""
    k_new, k_cat, k_u, k_r, k_mu, k_mr = jax.random.split(key, 6)
    fresh = _sample_like(space, k_new, g)
    cat_keys = jax.random.split(k_cat, len(encoding.gene_cardinalities(space)))
    repl = {}
    for kk, name in zip(cat_keys, encoding.gene_cardinalities(space), strict=True):
        a = getattr(g, name)
        hit = jax.random.uniform(kk, jnp.shape(a)) < config.p_mutate
        repl[name] = jnp.where(hit, getattr(fresh, name), a)
    u, r = g.u, g.relax
    hit_u = jax.random.uniform(k_mu, u.shape) < config.p_mutate_continuous
    hit_r = jax.random.uniform(k_mr, r.shape) < config.p_mutate_continuous
    repl["u"] = u + jnp.where(hit_u, config.sigma_u * jax.random.normal(k_u, u.shape, u.dtype), 0.0)
    repl["relax"] = r + jnp.where(hit_r, config.sigma_relax * jax.random.normal(k_r, r.shape, r.dtype), 0.0)
    return g._replace(**repl)


def crossover(config: GAConfig, a: Genome, b: Genome, key: jax.Array) -> Genome:
    """Uniform crossover (each entry from `a` or `b` with probability 1/2), applied with probability
    `p_crossover`; otherwise the child is `a`."""
    k_do, k_mask = jax.random.split(key)
    do = jax.random.uniform(k_do) < config.p_crossover
    leaves_a, tree = jax.tree_util.tree_flatten(a)
    leaves_b = jax.tree_util.tree_leaves(b)
    keys = jax.random.split(k_mask, len(leaves_a))
    mixed = [
        jnp.where(do & (jax.random.uniform(k, jnp.shape(x)) < 0.5), y, x)
        for k, x, y in zip(keys, leaves_a, leaves_b, strict=True)
    ]
    return jax.tree_util.tree_unflatten(tree, mixed)


def _score(space, config, fitness_fn, pop: Genome, budget) -> jax.Array:
    fit = jnp.asarray(fitness_fn(pop))
    fit = jnp.where(jnp.isnan(fit), jnp.inf, fit)
    ok = jax.vmap(lambda g: within_budget(space, config, g, budget))(pop)
    return jnp.where(ok, fit, jnp.inf)


def _take(pop: Genome, idx) -> Genome:
    return jax.tree.map(lambda a: a[idx], pop)


def init(
    space: SearchSpace,
    config: GAConfig,
    fitness_fn: Callable[[Genome], jax.Array],
    key: jax.Array,
    seeds: Genome | None = None,
    budget=jnp.inf,
) -> GAState:
    """A first population: the `seeds` (at most pop_size of them) topped up with random genomes, repaired and
    scored, sorted best first."""
    k_rand, k_rep, key = jax.random.split(key, 3)
    pop = encoding.random_genomes(space, k_rand, config.pop_size)
    if seeds is not None:
        n = min(int(jax.tree_util.tree_leaves(seeds)[0].shape[0]), config.pop_size)
        pop = jax.tree.map(lambda p, s: p.at[:n].set(s[:n].astype(p.dtype)), pop, seeds)
    budget = jnp.asarray(budget, jnp.result_type(float))
    pop = jax.vmap(lambda g, k: repair(space, config, g, k, budget))(pop, jax.random.split(k_rep, config.pop_size))
    fit = _score(space, config, fitness_fn, pop, budget)
    order = jnp.argsort(fit, stable=True)
    return GAState(_take(pop, order), fit[order], key, jnp.zeros((), jnp.int32))


def children(space: SearchSpace, config: GAConfig, population: Genome, fitness, key: jax.Array, budget=jnp.inf):
    """`num_children` children of a population with the given fitness (lower is better): tournament selection,
    crossover, mutation and budget repair (steps 1-4 of a generation)."""
    k_sel, k_x, k_m, k_rep = jax.random.split(key, 4)
    lam = config.num_children
    mu = jnp.shape(fitness)[0]
    budget = jnp.asarray(budget, jnp.result_type(float))
    cand = jax.random.randint(k_sel, (2, lam, config.tournament), 0, mu)
    winners = jnp.take_along_axis(cand, jnp.argmin(fitness[cand], axis=-1)[..., None], axis=-1)[..., 0]
    pa, pb = _take(population, winners[0]), _take(population, winners[1])
    kids = jax.vmap(lambda a, b, k: crossover(config, a, b, k))(pa, pb, jax.random.split(k_x, lam))
    kids = jax.vmap(lambda g, k: mutate(space, config, g, k))(kids, jax.random.split(k_m, lam))
    return jax.vmap(lambda g, k: repair(space, config, g, k, budget))(kids, jax.random.split(k_rep, lam))


def step(
    space: SearchSpace, config: GAConfig, fitness_fn: Callable[[Genome], jax.Array], state: GAState, budget=jnp.inf
) -> GAState:
    """One generation (pure; see the module docstring)."""
    key, k_kids = jax.random.split(state.key)
    mu = config.pop_size
    budget = jnp.asarray(budget, jnp.result_type(float))
    kids = children(space, config, state.population, state.fitness, k_kids, budget)
    fit_kids = _score(space, config, fitness_fn, kids, budget)
    allpop = jax.tree.map(lambda a, b: jnp.concatenate([a, b]), state.population, kids)
    allfit = jnp.concatenate([state.fitness, fit_kids])
    best = jnp.argsort(allfit, stable=True)[:mu]
    return GAState(_take(allpop, best), allfit[best], key, state.generation + 1)


def run(
    space: SearchSpace,
    config: GAConfig,
    fitness_fn: Callable[[Genome], jax.Array],
    state: GAState,
    num_generations: int,
    budget=jnp.inf,
) -> tuple[GAState, jax.Array]:
    """`num_generations` generations in one `lax.scan`; returns the final state and the best fitness after each
    generation. Wrap it in `jax.jit` (space, config, fitness_fn and num_generations static)."""

    def body(s, _):
        s = step(space, config, fitness_fn, s, budget)
        return s, s.fitness[0]

    return jax.lax.scan(body, state, None, length=num_generations)
