"""Bad input to sampling (issue 14, "nothing lost, nothing silent"): every case raises a ValueError that names the
argument, field, step or zoo member on the host, or, under tracing, gives NaN; nothing returns finite garbage."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import omsjax
from omsjax import integrate, noise, oracles, presets, sampler
from omsjax.schedule import Schedule
from omsjax.search.archive import Archive

NS = noise.vp_linear()
GMM = oracles.GaussianMixture.create(np.zeros((1, 3)), np.ones(1), np.ones(1))
GOOD = GMM.model(NS)
X_T = jnp.asarray(np.random.RandomState(0).randn(4, 3))


def _model(apply_fn, name="m", **kw):
    return omsjax.Model(apply_fn, None, name=name, **kw)


# --- 1. times outside the noise schedule's [t_min, t_max] ----------------------------------------------------


@pytest.mark.parametrize("where,value", [(0, 3.0), (-1, 1e-7)])
def test_times_outside_the_noise_schedule(where, value):
    s = presets.dpm_solver_pp(NS, 4, 2)
    bad = s._replace(ts=s.ts.at[where].set(value))
    step = 0 if where == 0 else 4
    with pytest.raises(ValueError, match=rf"Schedule.ts at step {step}: time .* outside the noise schedule's range"):
        omsjax.sample(GOOD, NS, bad, X_T)
    run = jax.jit(lambda s, x: omsjax.sample(GOOD, NS, s, x))
    assert bool(jnp.all(jnp.isfinite(run(s, X_T))))
    assert bool(jnp.all(jnp.isnan(run(bad, X_T))))  # was finite garbage (~1e3..1e19)
    out = jax.vmap(lambda s: omsjax.sample(GOOD, NS, s, X_T))(omsjax.stack([s, bad]))
    assert bool(jnp.all(jnp.isfinite(out[0]))) and bool(jnp.all(jnp.isnan(out[1])))
    # EDM's Heun sampler: the same range, on the host and under tracing.
    with pytest.raises(ValueError, match=r"ts must lie in \[t_min"):
        omsjax.sample_heun(GOOD, NS, bad.ts, X_T)
    heun = jax.jit(lambda ts, x: omsjax.sample_heun(GOOD, NS, ts, x))
    assert bool(jnp.all(jnp.isfinite(heun(s.ts, X_T)))) and bool(jnp.all(jnp.isnan(heun(bad.ts, X_T))))


# --- 2. non-finite noise and data mean -----------------------------------------------------------------------


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_noise_is_rejected_when_concrete(value):
    s = presets.ddim(NS, 3)
    x = X_T.at[1, 2].set(value).at[3, 0].set(value)
    msg = r"x_T has 2 non-finite value\(s\) \(NaN or inf\) in 2 of its 4 sample\(s\); the first is x_T\[1, 2\]"
    for bad in (x, np.asarray(x)):
        with pytest.raises(ValueError, match=msg):
            omsjax.sample(GOOD, NS, s, bad)
        with pytest.raises(ValueError, match=msg):
            omsjax.sample_many(GOOD, NS, omsjax.stack([s, s]), bad)
        with pytest.raises(ValueError, match=msg):
            omsjax.sample_heun(GOOD, NS, s.ts, bad)
        # A concrete x_T closed over inside a jit is still checked.
        with pytest.raises(ValueError, match=msg):
            jax.jit(lambda s, bad=bad: omsjax.sample(GOOD, NS, s, bad))(s)
    # Traced noise cannot be checked: the run goes on (and its output is not finite).
    out = jax.jit(lambda x: omsjax.sample(GOOD, NS, s, x))(x)
    assert not bool(jnp.all(jnp.isfinite(out)))
    closed = jax.jit(lambda s: omsjax.sample(GOOD, NS, s, X_T))(s)
    np.testing.assert_array_equal(closed, omsjax.sample(GOOD, NS, s, X_T))


def test_non_finite_data_mean_is_rejected():
    s = presets.ddim(NS, 3, afs="mean_x0")
    omsjax.sample(GOOD, NS, s, X_T, data_mean=jnp.zeros(3))
    with pytest.raises(ValueError, match=r"data_mean has 1 non-finite value"):
        omsjax.sample(GOOD, NS, s, X_T, data_mean=jnp.asarray([0.0, jnp.nan, 0.0]))


# --- 3. a model that returns NaN or inf ----------------------------------------------------------------------


def _nan_below(t_nan, sample=None):
    """eps = x, but NaN (for every sample, or only `sample`) at times below t_nan."""

    def apply_fn(params, x, t):
        bad = t[:, None] < t_nan
        if sample is not None:
            bad = bad & (jnp.arange(x.shape[0]) == sample)[:, None]
        return jnp.where(bad, jnp.nan, x)

    return apply_fn


def test_generate_names_the_step_and_the_member_of_a_nan_model():
    s = presets.ddim(NS, 4)._replace(model=jnp.asarray([0, 0, 1, 1], jnp.int32))
    zoo = (_model(lambda p, x, t: x, "fine"), _model(_nan_below(2.0), "broken"))
    t2 = float(s.ts[2])
    with pytest.raises(ValueError, match=rf"model returned non-finite values at step 2 \(t = {t2:.6g}\): zoo member 1 "
                       r"'broken', on a finite input, in 5 of 5 sample\(s\) .*samples 0..4 of 12, seed 3"):  # fmt: skip
        omsjax.generate(zoo, NS, s, 12, (3,), key=3, batch_size=5, dtype=jnp.float64)
    # The helper: the step, its time, the member, the samples; None for a finite run.
    found = sampler.first_nonfinite_step(zoo, NS, s, X_T)
    assert found == sampler.NonFiniteStep(2, t2, "model", 1, "broken", (0, 1, 2, 3), 4)
    assert sampler.first_nonfinite_step((zoo[0], zoo[0]), NS, s, X_T) is None
    one = _model(_nan_below(float(s.ts[1]) + 1e-9, sample=2), "one sample")
    found = sampler.first_nonfinite_step(one, NS, presets.ddim(NS, 4), X_T)
    assert (found.step, found.cause, found.model, found.samples) == (1, "model", 0, (2,))
    with pytest.raises(ValueError, match="outside jit"):
        jax.jit(lambda x: sampler.first_nonfinite_step(one, NS, s, x))(X_T)


def test_the_search_scores_a_nan_model_inf_and_says_why(tmp_path, caplog):
    from omsjax.search import evaluate as EV

    s = presets.ddim(NS, 4)._replace(model=jnp.asarray([0, 0, 1, 1], jnp.int32))
    zoo = (_model(lambda p, x, t: x, "fine"), _model(_nan_below(2.0), "broken"))
    ev = EV.Evaluator(zoo, NS, num_samples=4, sample_shape=(3,), archive=tmp_path / "a.jsonl", method="map")
    with caplog.at_level("WARNING", logger="omsjax.search.evaluate"):
        (rec,) = ev.evaluate_schedules([s])
    assert rec.score == float("inf")
    assert "model returned non-finite values at step 2" in rec.note and "'broken'" in rec.note
    assert rec.note in caplog.text and "scored FD = inf" in caplog.text
    assert Archive(tmp_path / "a.jsonl").get(rec.key, rec.eval_key).note == rec.note  # kept on disk


def test_an_overflowing_update_is_told_apart_from_the_model():
    # Data predictions of +-1.5e308 are finite, but the order-2 update's difference of them is not.
    big = _model(lambda p, x, t: jnp.where(t[:, None] > 0.8, 1.5e308, -1.5e308) * jnp.ones_like(x), "big",
                 parameterization="data")  # fmt: skip
    s = presets.dpm_solver_pp(NS, 4, 2)
    found = sampler.first_nonfinite_step(big, NS, s, X_T)
    assert (found.step, found.cause, found.model) == (3, "update", None)
    assert "state became non-finite at step 3" in found.message and "update of step 2" in found.message


def test_the_diagnosis_changes_no_output():
    s = presets.unipc(NS, 5, 2)
    x = omsjax.sample(GOOD, NS, s, X_T)
    switches = integrate.Switches(diagnose=True)
    out, (x_ok, f_ok, ok, raw_ok), f0, ok0, raw0 = integrate.run_jit((GOOD,), NS, s, X_T, switches=switches)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(x))
    assert x_ok.shape == f_ok.shape == raw_ok.shape == (5, 4) and ok.shape == (5,) and f0.shape == raw0.shape == (4,)
    assert bool(jnp.all(x_ok) & jnp.all(f_ok) & jnp.all(ok) & ok0 & jnp.all(raw_ok) & jnp.all(raw0))


# --- 4. a sample shape other than the model's ----------------------------------------------------------------


def test_model_sample_shape_field():
    f = GOOD.apply_fn
    m = omsjax.Model(f, None, "noise", 1.0, 0.5, "n", (3,))  # positional, the new field last
    assert m.sample_shape == (3,) and omsjax.Model(f).sample_shape is None
    assert omsjax.Model(f, sample_shape=[8, 8, np.int64(1)]).sample_shape == (8, 8, 1)
    static = omsjax.Model(f, sample_shape=(3,))
    assert jax.tree_util.tree_structure(static) != jax.tree_util.tree_structure(omsjax.Model(f))  # static field
    for bad in ((0,), (-1, 2), (2.5,), (True,), "28x28", 3):
        with pytest.raises(ValueError, match="Model.sample_shape must be None or a tuple of positive ints"):
            omsjax.Model(f, sample_shape=bad)


def test_a_sample_shape_other_than_declared_is_rejected():
    s = presets.ddim(NS, 3)
    zoo = (GMM.model(NS), _model(lambda p, x, t: x, "b", sample_shape=(3,)))
    omsjax.sample(zoo, NS, s, X_T)
    x = jnp.zeros((2, 4))
    msg = r"x_T of shape \(2, 4\) holds samples of shape \(4,\), but zoo member 1 'b' declares sample_shape \(3,\)"
    with pytest.raises(ValueError, match=msg):
        omsjax.sample(zoo, NS, s, x)
    with pytest.raises(ValueError, match=msg):
        jax.jit(lambda x: omsjax.sample(zoo, NS, s, x))(x)
    with pytest.raises(ValueError, match="^" + msg):  # the shared x_T: checked once, not per candidate
        omsjax.sample_many(zoo, NS, omsjax.stack([s, s]), x)
    with pytest.raises(ValueError, match=msg.replace("zoo member 1", "model")):
        omsjax.sample_heun(zoo[1], NS, s.ts, x)
    with pytest.raises(ValueError, match=r"holds samples of shape \(4,\), but zoo member 1 'b'"):
        omsjax.generate(zoo, NS, s, 2, (4,), dtype=jnp.float64)


# --- 5. x_T that is not an array -----------------------------------------------------------------------------


def test_a_list_as_noise_is_rejected():
    s = presets.ddim(NS, 3)
    msg = r"x_T must be a jax or numpy array of shape \[batch, ...\], got list"
    with pytest.raises(ValueError, match=msg):
        omsjax.sample(GOOD, NS, s, X_T.tolist())
    with pytest.raises(ValueError, match=msg):
        omsjax.sample_many(GOOD, NS, omsjax.stack([s]), X_T.tolist())
    with pytest.raises(ValueError, match=msg):
        omsjax.sample_heun(GOOD, NS, s.ts, X_T.tolist())
    np.testing.assert_array_equal(omsjax.sample(GOOD, NS, s, np.asarray(X_T)), omsjax.sample(GOOD, NS, s, X_T))


# --- 6. a model that fails, or returns the wrong shape or dtype ----------------------------------------------

SIG = r"\(expected apply_fn\(params, x \[B, ...\], t \[B\]\) -> output of x's shape\)"


def _gray(params, x, t):
    return x @ jnp.ones((1, 1), x.dtype)  # a 1-channel model: fails on 3 channels


@pytest.mark.parametrize("jit", [False, True])
def test_a_failing_model_call_names_the_member(jit):
    s, s1 = presets.ddim(NS, 3), presets.ddim(NS, 3, model=1)

    def run(zoo, ns, s, x):
        return jax.jit(lambda s, x: omsjax.sample(zoo, ns, s, x))(s, x) if jit else omsjax.sample(zoo, ns, s, x)

    x = jnp.zeros((2, 4, 4, 3))
    zoo = (_model(lambda p, x, t: x, "rgb"), _model(_gray, "gray"))
    # A concrete schedule compiles only the members it calls; a traced one (under jit) compiles the whole zoo.
    with pytest.raises(ValueError, match=rf"zoo member 1 'gray' failed when called with x \[2, 4, 4, 3\] float64, "
                       rf"t \[2\] float64 {SIG}: TypeError: dot_general"):  # fmt: skip
        run(zoo, NS, s if jit else s1, x)
    declared = (zoo[0], _model(_gray, "gray", sample_shape=(4, 4, 1)))
    with pytest.raises(ValueError, match=r"\(2, 4, 4, 3\) .* zoo member 1 'gray' declares sample_shape \(4, 4, 1\)"):
        run(declared, NS, s, x)
    with pytest.raises(ValueError, match=rf"zoo member 0 'two args' failed .*{SIG}: TypeError"):
        run(_model(lambda x, t: x, "two args"), NS, s, X_T)
    for p in ("noise", "edm_raw"):
        with pytest.raises(ValueError, match=rf"zoo member 0 'gray' failed .*{SIG}"):
            run(_model(_gray, "gray", parameterization=p), NS, s, x)
    if not jit:  # member 1 is never called, so never traced
        assert np.all(np.isfinite(np.asarray(run(zoo, NS, s, x))))


@pytest.mark.parametrize(
    "apply_fn,match",
    [
        (lambda p, x, t: jnp.ones(x.shape, jnp.int32), r"returned \[4, 3\] int32 for x \[4, 3\] float64: expected a f"),
        (lambda p, x, t: x[:, :1], r"returned \[4, 1\] float64 for x \[4, 3\] float64"),
        (lambda p, x, t: x[0], r"returned \[3\] float64"),
        (lambda p, x, t: (x, x), r"returned a tuple for x \[4, 3\] float64, expected apply_fn"),
    ],
)
def test_a_wrong_model_output_names_the_member(apply_fn, match):
    s = presets.ddim(NS, 3)
    for parameterization in ("noise", "v", "edm_raw"):
        zoo = (GOOD, _model(apply_fn, "odd", parameterization=parameterization))
        with pytest.raises(ValueError, match="zoo member 1 'odd' " + match):
            omsjax.sample(zoo, NS, s._replace(model=jnp.asarray([0, 1, 0], jnp.int32)), X_T)
        with pytest.raises(ValueError, match="zoo member 1 'odd' " + match):  # alone in the compiled program
            omsjax.sample(zoo, NS, presets.ddim(NS, 3, model=1), X_T)
    with pytest.raises(ValueError, match="model 'odd' " + match):
        omsjax.sample_heun(_model(apply_fn, "odd"), NS, s.ts, X_T)


# --- 7. inconsistent schedule JSON ---------------------------------------------------------------------------


def _json():
    return json.loads(presets.dpm_solver_pp(NS, 4, 2).to_json())


def _edit(**fields):
    return json.dumps({**_json(), **fields})


@pytest.mark.parametrize(
    "text,match",
    [
        ("[1, 2]", r"must be an object \{\"omsjax_schedule\": 1, ...\}, got a list"),
        ("3", "must be an object .* got a number"),
        ("null", "must be an object .* got null"),
        ('"schedule"', "must be an object .* got a string"),
        (_edit(num_steps=7), r"field 'num_steps' is 7 but 'ts' has 5 times \(4 steps\)"),
        (_edit(num_steps="4"), r"field 'num_steps' must be an integer >= 1, got '4'"),
        (_edit(model=[0, 10**30, 0, 0]), r"field 'model', step 1: integer 10+ is out of range"),
        (_edit(order=[1, 2, 2, -(2**40)]), r"field 'order', step 3: integer -\d+ is out of range"),
        (_edit(ts=[10**400, 0.5, 0.3, 0.1, 0.01]), r"field 'ts', step 0: 1000.* too large"),
        (_edit(ts=[1e999, 0.5, 0.3, 0.1, 0.01]).replace("Infinity", "1e400"), r"Schedule.ts at step 0: non-finite"),
        (_edit(omsjax_schedule=True), "not an omsjax schedule of version 1"),
        (_edit(corector=[False] * 4), r"unknown field\(s\) \['corector'\]"),
        (_edit(afs=["none"]), "field 'afs' must be one of"),
        (_edit(corrector=[False, 0, False, False]), r"'corrector', step 1: expected bool"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\xff", r"not UTF-8 text \(byte 0 is b'\\x89': a binary file\?\)"),
        ('{"a": ' * 100000 + "1" + "}" * 100000, "schedule JSON cannot be read: RecursionError"),
    ],
)
def test_bad_schedule_json_names_the_field(text, match):
    with pytest.raises(ValueError, match=match):
        Schedule.from_json(text, num_models=1)
    with pytest.raises(ValueError, match="^in the file x.json: .*" + match):
        Schedule.from_json(text, num_models=1, source="in the file x.json")


def test_schedule_files_name_the_file(tmp_path):
    s = presets.dpm_solver_pp(NS, 4, 2)
    good = tmp_path / "good.json"
    good.write_bytes(b"\xef\xbb\xbf" + s.to_json().encode())  # with a UTF-8 byte-order mark
    back = Schedule.load(good, num_models=1, noise_schedule=NS)
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(s, back, strict=True))
    assert Schedule.from_json(s.to_json().encode(), num_models=1).num_steps == 4
    binary = tmp_path / "model.npz"
    binary.write_bytes(bytes(range(256)))
    with pytest.raises(ValueError, match=rf"^schedule file {binary}: schedule JSON is not UTF-8 text"):
        Schedule.load(binary)
    with pytest.raises(ValueError, match=rf"^cannot read schedule file {tmp_path / 'missing.json'}: No such file"):
        Schedule.load(tmp_path / "missing.json")
    with pytest.raises(ValueError, match=r"schedule file .*good.json: Schedule.model at step 0: index 0 is not in"):
        Schedule.load(good, num_models=0)
    with pytest.raises(ValueError, match="must be text .* or a dict, got int"):
        Schedule.from_json(5)
