"""`search.ga`: the genetic search as one compiled scan, its budget repair, NaN as the worst fitness, and the GA's and
the loop's config errors."""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from search_cases import LAT, SPACES, synthetic_fitness

from omsjax.search import encoding as E
from omsjax.search import ga, loop
from omsjax.search.space import SearchSpace

REPO = Path(__file__).resolve().parent.parent


def test_ga_improves_a_synthetic_objective_in_one_compiled_scan():
    space = SearchSpace.for_nfe(4, LAT, model=0)
    cfg = ga.GAConfig(pop_size=32, num_children=32)
    state = ga.init(space, cfg, synthetic_fitness, jax.random.PRNGKey(0))
    run = jax.jit(lambda s: ga.run(space, cfg, synthetic_fitness, s, 150))
    final, curve = run(state)
    assert float(curve[-1]) < 0.01 * float(state.fitness[0]) and float(curve[-1]) < 0.05
    assert np.all(np.diff(np.asarray(curve)) <= 0)  # (mu + lambda) never loses its best
    assert np.all(np.asarray(final.population.order[0]) == 2)
    assert int(final.generation) == 150
    run(final)  # a second call with another state does not recompile
    assert run._cache_size() == 1


def test_ga_respects_the_budget_and_nan_is_worst():
    space = SPACES["model"]
    cfg = ga.GAConfig(pop_size=24, num_children=24)

    def fitness(pop):  # prefer expensive models early; NaN for schedules of exactly 3 steps
        m, n = jax.vmap(lambda g: E.decode_models(space, g))(pop)
        w = jnp.where(jnp.arange(10, dtype=jnp.int32) < n[:, None], jnp.asarray(LAT)[m], 0.0)
        f = -jnp.sum(w * jnp.linspace(1.0, 0.0, 10), -1)
        return jnp.where(n == 3, jnp.nan, f)

    run = jax.jit(lambda s, b: ga.run(space, cfg, fitness, s, 60, b))
    for budget in (12.0, 30.0):
        state = ga.init(space, cfg, fitness, jax.random.PRNGKey(1), budget=budget)
        final, _ = run(state, budget)
        costs = np.asarray(jax.vmap(lambda g: E.cost(space, g))(final.population))
        fit = np.asarray(final.fitness)
        assert np.all(costs[np.isfinite(fit)] <= budget + 1e-9)
        assert np.mean(costs >= 0.9 * budget - 1e-9) > 0.8  # repaired toward [0.9 budget, budget]
        n = np.asarray(jax.vmap(lambda g: E.decode_models(space, g)[1])(final.population))
        assert not np.any((n == 3) & np.isfinite(fit))
    assert run._cache_size() == 1  # the budget is traced


def test_repair_moves_cost_into_the_band():
    space = SPACES["joint"]
    cfg = ga.GAConfig(repair_iters=64)
    pop = E.random_genomes(space, jax.random.PRNGKey(2), 64)
    rep = jax.vmap(lambda g, k: ga.repair(space, cfg, g, k, 20.0))(pop, jax.random.split(jax.random.PRNGKey(3), 64))
    c = np.asarray(jax.vmap(lambda g: E.cost(space, g))(rep))
    assert np.all(c <= 20.0 + 1e-9) and np.all(c >= 18.0 - 1e-9)
    cfg_n = ga.GAConfig(budget_kind="nfe", repair_iters=64)
    rep = jax.vmap(lambda g, k: ga.repair(space, cfg_n, g, k, 6.0))(pop, jax.random.split(jax.random.PRNGKey(4), 64))
    n = np.asarray(jax.vmap(lambda g: E.nfe(space, g))(rep))
    assert np.all((n >= 5) & (n <= 6))


def test_ga_and_loop_config_errors():
    with pytest.raises(ValueError, match="p_mutate must be a probability"):
        ga.GAConfig(p_mutate=1.5)
    with pytest.raises(ValueError, match="budget_kind"):
        ga.GAConfig(budget_kind="seconds")
    with pytest.raises(ValueError, match="GAConfig.pop_size must be an int >= 1, got 0"):
        ga.GAConfig(pop_size=0)
    with pytest.raises(ValueError, match="LoopConfig.per_stage must be an int >= 1, got True"):
        loop.LoopConfig(per_stage=True)
    with pytest.raises(ValueError, match="explore_fraction must be in"):
        loop.LoopConfig(explore_fraction=1.2)
