"""Schedule validation (host side, clear ValueErrors) and JSON round trips."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import omsjax
from omsjax import noise, oracles, presets
from omsjax.schedule import Schedule, check_schedule

NS = noise.vp_linear()


def _base():
    return presets.dpm_solver_pp(NS, 5, 3)


@pytest.mark.parametrize(
    "mutate,match",
    [
        (
            lambda s: s._replace(ts=s.ts.at[2].set(s.ts[1])),
            r"Schedule.ts at step 1: times must decrease strictly",
        ),
        (lambda s: s._replace(ts=s.ts.at[3].set(jnp.nan)), r"Schedule.ts at step 3: non-finite"),
        (lambda s: s._replace(ts=s.ts.at[0].set(1.5)), r"Schedule.ts at step 0: time 1.5 outside"),
        (lambda s: s._replace(ts=s.ts.at[-1].set(-0.1)), r"Schedule.ts at step 5: times must be > 0"),
        (
            lambda s: s._replace(order=s.order.at[1].set(3)),
            r"Schedule.order at step 1: order 3 needs 3 evaluated",
        ),
        (
            lambda s: s._replace(order=s.order.at[4].set(5)),
            r"Schedule.order at step 4: order must be in 1..4",
        ),
        (lambda s: s._replace(order=s.order.at[0].set(0)), r"Schedule.order at step 0"),
        (
            lambda s: s._replace(model=s.model.at[2].set(1)),
            r"Schedule.model at step 2: index 1 is not in the zoo",
        ),
        (lambda s: s._replace(model=s.model.at[2].set(-1)), r"Schedule.model at step 2"),
        (lambda s: s._replace(start=s.start.at[1].set(2)), r"Schedule.start at step 1: start point 2"),
        (lambda s: s._replace(d1_points=s.d1_points.at[2].set(3)), r"Schedule.d1_points at step 2"),
        (lambda s: s._replace(prediction=s.prediction.at[0].set(2)), r"Schedule.prediction at step 0"),
        (lambda s: s._replace(relax_type=s.relax_type.at[0].set(7)), r"Schedule.relax_type at step 0"),
        (lambda s: s._replace(relax=s.relax.at[1].set(jnp.inf)), r"Schedule.relax at step 1: non-finite"),
        (lambda s: s._replace(d2_scale=s.d2_scale.at[1].set(jnp.nan)), r"Schedule.d2_scale at step 1"),
        (
            lambda s: s._replace(corrector=s.corrector.at[-1].set(True)),
            r"Schedule.corrector at step 4: no corr",
        ),
        (lambda s: s._replace(afs=jnp.asarray(3, jnp.int32)), r"Schedule.afs must be 0"),
        (lambda s: s._replace(model=s.model[:-1]), r"Schedule.model must have shape \(5,\)"),
        (lambda s: s._replace(ts=s.ts[None]), r"Schedule.ts must be a 1-D array"),
        (lambda s: s._replace(order=s.order.astype(jnp.float64)), r"Schedule.order must be an integer array"),
        (lambda s: s._replace(corrector=s.corrector.astype(jnp.int32)), r"Schedule.corrector must be a bool"),
        (lambda s: s._replace(afs=jnp.zeros(2, jnp.int32)), r"Schedule.afs must be an integer scalar"),
    ],
)
def test_bad_schedules_raise_naming_field_and_step(mutate, match):
    bad = mutate(_base())
    with pytest.raises(ValueError, match=match):
        check_schedule(bad, num_models=1, noise_schedule=NS)
    # `sample` runs the same check on concrete schedules before tracing anything.
    gmm = oracles.GaussianMixture.create(np.zeros((1, 3)), np.ones(1), np.ones(1))
    with pytest.raises(ValueError, match=match):
        omsjax.sample(gmm.model(NS), NS, bad, jnp.zeros((2, 3)))


def test_good_presets_pass():
    for s in (
        presets.ddim(NS, 3),
        presets.dpm_solver(NS, 7, 3),
        presets.dpm_solver_pp(NS, 10, 3),
        presets.unipc(NS, 4, 3, variant="bh1"),
        presets.unipc(NS, 4, 2, afs="zero_x0"),
    ):
        check_schedule(s, 1, NS)


def test_sample_rejects_bad_inputs():
    gmm = oracles.GaussianMixture.create(np.zeros((1, 3)), np.ones(1), np.ones(1))
    m = gmm.model(NS)
    s = presets.ddim(NS, 3)
    with pytest.raises(ValueError, match="noise_schedule must be"):
        omsjax.sample(m, "vp", s, jnp.zeros((2, 3)))
    with pytest.raises(ValueError, match="schedule must be an omsjax.Schedule"):
        omsjax.sample(m, NS, dict(s._asdict()), jnp.zeros((2, 3)))
    with pytest.raises(ValueError, match="x_T must be float32 or float64"):
        omsjax.sample(m, NS, s, jnp.zeros((2, 3), jnp.int32))
    with pytest.raises(ValueError, match="zoo entry 1 is a"):
        omsjax.sample((m, "not a model"), NS, s, jnp.zeros((2, 3)))
    with pytest.raises(ValueError, match="afs is 2 .* no data_mean"):
        omsjax.sample(m, NS, s._replace(afs=jnp.asarray(2, jnp.int32)), jnp.zeros((2, 3)))
    with pytest.raises(ValueError, match="data_mean of shape"):
        omsjax.sample(m, NS, s, jnp.zeros((2, 3)), data_mean=jnp.zeros(4))
    with pytest.raises(ValueError, match="parameterization must be one of"):
        omsjax.Model(lambda p, x, t: x, None, parameterization="eps")


def test_preset_argument_errors():
    with pytest.raises(ValueError, match="nfe must be an int >= 1, got 0"):
        presets.ddim(NS, 0)
    with pytest.raises(ValueError, match="unknown skip"):
        presets.ddim(NS, 4, skip="cosine")
    with pytest.raises(ValueError, match="order must be 1, 2 or 3"):
        presets.dpm_solver_pp(NS, 4, 4)
    with pytest.raises(ValueError, match="variant must be"):
        presets.unipc(NS, 4, 2, variant="bh3")
    with pytest.raises(ValueError, match="t_end"):
        presets.ddim(NS, 4, t_end=2.0)
    with pytest.raises(ValueError, match="unknown solver"):
        presets.preset("heun", NS, 4)


def test_json_round_trip_is_exact():
    for s in (presets.unipc(NS, 6, 3, skip="karras", afs="zero_x0"), presets.dpm_solver(NS, 7, 3)):
        text = s.to_json(note="test")
        d = json.loads(text)
        assert d["prediction"][0] in ("noise", "data") and d["metadata"] == {"note": "test"}
        back = Schedule.from_json(text, num_models=1)
        for a, b in zip(s, back, strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
            assert np.asarray(a).dtype == np.asarray(b).dtype


@pytest.mark.parametrize(
    "edit,match",
    [
        (lambda d: d.pop("order"), "lacks the field 'order'"),
        (lambda d: d.update(order=[1, 2, "x", 1]), r"field 'order', step 2: expected int"),
        (lambda d: d.update(order=[1, 2, 2.5, 1]), r"field 'order', step 2: expected int"),
        (
            lambda d: d.update(prediction=["data", "eps", "data", "data"]),
            r"'prediction', step 1: expected one",
        ),
        (lambda d: d.update(afs="maybe"), "field 'afs' must be one of"),
        (lambda d: d.update(omsjax_schedule=99), "not an omsjax schedule"),
        (lambda d: d.update(model=[0, 0, 3, 0]), r"Schedule.model at step 2: index 3 is not in the zoo"),
        (lambda d: d.update(ts=[1.0, 0.5, 0.6, 0.1, 0.01]), r"Schedule.ts at step 1"),
        (lambda d: d.update(corrector=[False] * 3), r"Schedule.corrector must have shape \(4,\)"),
    ],
)
def test_json_load_errors(edit, match):
    d = json.loads(presets.dpm_solver_pp(NS, 4, 2).to_json())
    edit(d)
    with pytest.raises(ValueError, match=match):
        Schedule.from_json(json.dumps(d), num_models=2)


def test_json_rejects_garbage():
    with pytest.raises(ValueError, match="not valid JSON"):
        Schedule.from_json("{not json")


def test_nfe_and_cost():
    s = presets.dpm_solver_pp(NS, 4, 2)._replace(model=jnp.asarray([0, 1, 1, 0], jnp.int32))
    assert int(s.nfe()) == 4
    assert float(s.cost([3.0, 1.0])) == 8.0
    stacked = omsjax.stack([s, s._replace(afs=jnp.asarray(1, jnp.int32))])
    np.testing.assert_array_equal(stacked.nfe(), [4, 3])
    np.testing.assert_array_equal(stacked.cost([3.0, 1.0]), [8.0, 5.0])
    with pytest.raises(ValueError, match="one length"):
        omsjax.stack([s, presets.ddim(NS, 5)])


def test_from_times_keeps_the_decisions_and_checks_the_times():
    from omsjax import noise, presets

    ns = noise.vp_linear()
    like = presets.unipc(ns, 4, 2)
    ts = np.asarray([1.0, 0.5, 0.2, 0.05, 1e-3])
    s = Schedule.from_times(ts, like=like)
    np.testing.assert_array_equal(np.asarray(s.ts), ts)
    for f in Schedule._fields[1:]:
        np.testing.assert_array_equal(np.asarray(getattr(s, f)), np.asarray(getattr(like, f)))
    assert Schedule.from_times(ts.astype(np.float32), like=like).ts.dtype == np.float32
    with pytest.raises(ValueError, match=r"shape \[5\]"):
        Schedule.from_times(ts[:-1], like=like)
    with pytest.raises(ValueError, match="ts"):
        Schedule.from_times(ts[::-1], like=like)
    with pytest.raises(ValueError, match="t_max|range|outside"):
        Schedule.from_times(ts * 2, like=like, noise_schedule=ns)
    with pytest.raises(ValueError, match="like="):
        Schedule.from_times(ts, like=None)
    # Traced times pass through (a fit of the times).
    got = jax.jit(lambda t: Schedule.from_times(t, like=like).ts)(jnp.asarray(ts))
    np.testing.assert_array_equal(np.asarray(got), ts)
