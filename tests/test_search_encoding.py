"""`search.encoding` and `search.seeding`: every random genome decodes to a valid schedule, presets encode and
decode back exactly (on every noise schedule, from float32 times too), the time parameterisation and spacings."""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from search_cases import LAT, NS, SPACES, one

from omsjax import noise, presets, spacing
from omsjax.schedule import check_schedule
from omsjax.search import encoding as E
from omsjax.search import seeding
from omsjax.search.space import SearchSpace

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("name", list(SPACES))
def test_every_random_genome_decodes_to_a_valid_schedule(name):
    space = SPACES[name]
    pop = E.random_genomes(space, jax.random.PRNGKey(1), 48)
    # Wild continuous genes and out-of-range categorical genes are repaired, never rejected.
    pop = pop._replace(u=pop.u * 40.0, order=pop.order + 3 * (jnp.arange(48, dtype=jnp.int32)[:, None] % 2))
    scheds, lengths = jax.vmap(lambda g: E.decode(space, NS, g))(pop)
    costs = jax.vmap(lambda g: E.cost(space, g))(pop)
    nfes = jax.vmap(lambda g: E.nfe(space, g))(pop)
    for i in range(48):
        g = one(pop, i)
        s = E.to_schedule(space, NS, g)  # runs check_schedule
        check_schedule(s, space.num_models, NS)
        assert s.num_steps == int(lengths[i])
        np.testing.assert_array_equal(np.asarray(s.order), np.asarray(scheds.order[i][: s.num_steps]))
        assert float(s.ts[0]) == space.t_start and float(s.ts[-1]) == pytest.approx(space.t_end, rel=1e-12)
        assert float(s.cost(LAT)) == pytest.approx(float(costs[i]), rel=1e-12)
        assert int(s.nfe()) == int(nfes[i])
        if space.mode == "solver":
            assert int(s.nfe()) == space.nfe and np.all(np.asarray(s.model) == space.model)


def test_all_skip_genome_keeps_one_step_of_the_smallest_model():
    space = SPACES["model"]
    g = one(E.random_genomes(space, jax.random.PRNGKey(0), 1), 0)
    g = g._replace(model=jnp.full_like(g.model, space.skip))
    s = E.to_schedule(space, NS, g)
    assert s.num_steps == 1 and int(s.model[0]) == 0 and float(E.cost(space, g)) == LAT[0]


@pytest.mark.parametrize("mode", ["solver", "model", "joint"])
def test_presets_encode_and_decode_back_exactly(mode):
    space = SPACES[mode]
    seeds = seeding.preset_seeds(space, NS, budget=40.0)
    assert spacing.U_BOUND > 0 and int(seeds.order.shape[0]) >= (40 if mode == "solver" else 8)
    # Spot-check against the presets themselves.
    if mode == "solver":
        want = presets.unipc(NS, 5, 3, variant="bh1", skip="karras", model=2, afs="zero_x0")
    else:
        want = presets.unipc(NS, 4, 2, model=1) if mode == "model" else presets.unipc(NS, 4, 2, model=1)
    got = E.to_schedule(space, NS, seeding.encode(space, NS, want))
    for name, a, b in zip(want._fields, want, got, strict=True):
        np.testing.assert_allclose(np.asarray(a, float), np.asarray(b, float), rtol=1e-12, atol=1e-14, err_msg=name)


def test_encode_rejects_what_does_not_fit():
    space = SPACES["solver"]
    with pytest.raises(ValueError, match="NFE 6, the space 5"):
        seeding.encode(space, NS, presets.ddim(NS, 6, model=2))
    with pytest.raises(ValueError, match="multistep only"):
        seeding.encode(space, NS, presets.dpm_solver(NS, 5, 2, model=2))
    with pytest.raises(ValueError, match="runs model 2"):
        seeding.encode(space, NS, presets.ddim(NS, 5, model=0))
    with pytest.raises(ValueError, match="mode must be one of"):
        SearchSpace(num_positions=3, latencies=LAT, mode="both")
    with pytest.raises(ValueError, match="num_positions must be nfe \\+ 1"):
        SearchSpace(num_positions=3, latencies=LAT, mode="solver", nfe=5)
    with pytest.raises(ValueError, match="budget instead"):
        SearchSpace(num_positions=3, latencies=LAT, mode="model", nfe=2)
    with pytest.raises(ValueError, match="spacing must be one of"):
        SearchSpace(num_positions=3, latencies=LAT, mode="model", spacing="cosine")


def test_log_snr_parameterisation():
    space = SPACES["solver"]
    g = one(E.random_genomes(space, jax.random.PRNGKey(3), 1), 0)
    g = g._replace(u=jnp.zeros_like(g.u), afs=jnp.asarray(0, jnp.int32))
    s = E.to_schedule(space, NS, g)
    np.testing.assert_allclose(np.asarray(s.ts), spacing.time_steps(NS, 5, "logSNR"), rtol=1e-12)


@pytest.mark.parametrize("base", spacing.SPACINGS)
def test_base_spacing_at_every_length_and_presets_round_trip(base):
    """u = 0 is the base spacing itself at whatever length the skips leave (model mode follows it exactly), and a
    preset in another spacing still encodes and decodes back."""
    space = SearchSpace(num_positions=8, latencies=LAT, mode="model", spacing=base)
    g = one(E.random_genomes(space, jax.random.PRNGKey(5), 1), 0)
    for n in (1, 3, 8):
        keep = jnp.arange(8, dtype=jnp.int32) < n
        s = E.to_schedule(space, NS, g._replace(model=jnp.where(keep, 1, space.skip).astype(jnp.int32)))
        np.testing.assert_allclose(np.asarray(s.ts), spacing.time_steps(NS, n, base), rtol=1e-10)
    joint = SearchSpace(num_positions=8, latencies=LAT, mode="joint", spacing=base)
    other = spacing.SPACINGS[(spacing.SPACINGS.index(base) + 1) % len(spacing.SPACINGS)]
    want = presets.dpm_solver_pp(NS, 6, 3, skip=other, model=1)
    got = E.to_schedule(joint, NS, seeding.encode(joint, NS, want))
    np.testing.assert_allclose(np.asarray(got.ts), np.asarray(want.ts), rtol=1e-10)
    seeds = seeding.preset_seeds(space, NS, budget=9.0)  # model-mode seeds are single-model presets in the base spacing
    s = E.to_schedule(space, NS, one(seeds, int(seeds.order.shape[0]) - 1))
    np.testing.assert_allclose(np.asarray(s.ts), spacing.time_steps(NS, s.num_steps, base), rtol=1e-10)


@pytest.mark.parametrize("name", ["vp_linear", "vp_cosine", "vp_discrete", "edm", "flow"])
def test_presets_encode_on_every_noise_schedule_with_float32_times(name):
    """Every noise schedule with its default arguments, and random valid time ranges: the presets seed the search,
    also from float32 times (a float32 session's presets; flow()'s t_start 0.999 is 0.99900001 in float32, which a
    float64 tolerance once rejected: "no preset fits this search space")."""
    ns = {"vp_linear": noise.vp_linear(), "vp_cosine": noise.vp_cosine(), "edm": noise.edm(),
          "vp_discrete": noise.vp_discrete(np.linspace(1e-4, 0.02, 1000)),
          "flow": noise.flow()}[name]  # fmt: skip
    rng = np.random.RandomState(3)
    lo, hi = float(ns.default_t_end), float(ns.t_max)
    ranges = [{}] + [dict(zip(("t_end", "t_start"), np.sort(rng.uniform(lo, hi, 2)).tolist(), strict=True))
                     for _ in range(4)]  # fmt: skip
    for kw in ranges:
        space = SearchSpace.for_nfe(4, LAT, noise_schedule=ns, **kw)
        assert jax.tree.leaves(seeding.preset_seeds(space, ns))[0].shape[0] > 0, kw
        s = presets.unipc(ns, 4, 2, t_start=space.t_start, t_end=space.t_end)
        g = seeding.encode(space, ns, s._replace(ts=jnp.asarray(s.ts, jnp.float32)))
        back = E.to_schedule(space, ns, g)
        np.testing.assert_allclose(np.asarray(back.ts), np.asarray(s.ts), rtol=1e-5)  # float32 rounding
