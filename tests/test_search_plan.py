"""`search.plan`: the one seed convention (`Seeds`), the one budget rule (`plan`) and `FindOptions`' checks, shared
by `find_schedule` and `omsjax search`."""

import jax
import pytest

from omsjax import noise
from omsjax.search.plan import FindOptions, Seeds, plan, seed_of
from omsjax.workflows import search_job

NS = noise.vp_linear()
LAT = (1.0, 2.0)  # ms per batch of a cheap and a dear member


def test_seeds_are_the_documented_offsets_of_one_seed():
    s = Seeds.of(7)
    assert (s.search, s.heldout, s.selection, s.check) == (7, 1007, 3007, 4007)
    fcfg = s.final_config(100, candidates=2)
    assert fcfg.seeds("heldout") == [1007, 1008, 1009] and fcfg.seeds("selection") == [3007, 3008, 3009]
    assert (jax.random.key_data(s.key) == jax.random.key_data(jax.random.PRNGKey(7))).all()
    assert seed_of(7) == 7 and seed_of(jax.random.PRNGKey(0)) == seed_of(jax.random.PRNGKey(0)) < 2**30
    for bad in (-1, True, 1.5, "3"):
        with pytest.raises(ValueError, match="seed|key"):
            seed_of(bad)


def test_solver_mode_takes_an_nfe_or_the_largest_nfe_a_latency_budget_pays_for():
    p = plan(NS, LAT, mode="solver", nfe=4, options=FindOptions())
    assert p.space.nfe == 4 and p.space.model == 1 and p.limit is None and p.kind == "cost"
    p = plan(NS, LAT, mode="solver", budget=7.9, options=FindOptions(model=1))  # 3 calls of 2 ms fit, 4 do not
    assert p.space.nfe == 3 and p.space.model == 1
    guided = plan(NS, LAT, mode="solver", budget=7.9, options=FindOptions(model=0, guidance=2.0))
    assert guided.space.nfe == 3  # a guided step of the 1 ms member pays for two calls
    with pytest.raises(ValueError, match=r"at least one step of model 1 \(2.0\)"):
        plan(NS, LAT, mode="solver", budget=1.5, options=FindOptions())


def test_model_and_joint_modes_take_an_nfe_or_a_latency_budget():
    p = plan(NS, LAT, mode="model", nfe=5, options=FindOptions())
    assert p.space.num_positions == 6 and p.limit == 5.0 and p.kind == "nfe"
    p = plan(NS, LAT, mode="joint", budget=4.5, options=FindOptions(max_steps=16))
    assert p.space.num_positions == 5 and p.limit == 4.5 and p.kind == "cost"  # 4 calls of the 1 ms member
    capped = plan(NS, LAT, mode="model", budget=100.0, options=FindOptions(max_steps=8))
    assert capped.space.num_positions == 8
    with pytest.raises(ValueError, match="exactly one of nfe= .* and budget="):
        plan(NS, LAT, mode="model", options=FindOptions())
    with pytest.raises(ValueError, match="options.model picks solver mode's model"):
        plan(NS, LAT, mode="joint", nfe=3, options=FindOptions(model=0))


@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(num_samples=1), "num_samples must be an int >= 2"),
        (dict(heldout_samples=True), "heldout_samples must be an int >= 2"),
        (dict(t_start=float("inf")), "t_start must be a finite number"),
        (dict(config={"stages": 1}), "config must be a loop.LoopConfig"),
    ],
)
def test_find_options_name_the_bad_field(kw, match):
    with pytest.raises(ValueError, match=f"FindOptions.{match}"):
        FindOptions(**kw)


def test_omsjax_search_takes_its_guidance_and_metric_name_from_its_objective(tmp_path):
    for field, value in (("guidance", 2.0), ("metric_name", "mine")):
        options = FindOptions(**{**vars(search_job.DEFAULTS), field: value})
        with pytest.raises(ValueError, match=f"omsjax search takes {field} from its objective"):
            search_job.run(tmp_path / "zoo", tmp_path / "out", nfe=3, options=options)
    assert not (tmp_path / "out").exists()  # refused before the folder is locked or anything loads
