"""Bad input, classes 6 and 7: arguments of the wrong kind and argument errors reported as internals. A `Schedule`
of Python lists is refused naming the field (it used to pass `check_schedule` and fail with an AttributeError);
`find_schedule` checks its noise schedule and its `out=` folder before any work and names the argument
(`out=` an existing file or a folder under a file used to end in FileExistsError / NotADirectoryError, a string
noise schedule in an AttributeError)."""

import jax.numpy as jnp
import numpy as np
import pytest

import omsjax
from omsjax import noise, presets
from omsjax.search import find_schedule

NS = noise.vp_linear()
MODEL = omsjax.Model(lambda p, x, t: 0.1 * x, None, name="tenth", sample_shape=(3,))
SCHEDULE = presets.ddim(NS, 3)


@pytest.mark.parametrize("field", omsjax.Schedule._fields)
@pytest.mark.parametrize("kind", [list, tuple])
def test_a_schedule_field_of_python_lists_is_named(field, kind):
    value = np.asarray(getattr(SCHEDULE, field))
    bad = SCHEDULE._replace(**{field: kind(value.tolist()) if value.ndim else kind([value.item()])})
    with pytest.raises(ValueError, match=rf"^Schedule\.{field} is a {kind.__name__}, not an array: build a Schedule"):
        omsjax.check_schedule(bad)
    with pytest.raises(ValueError, match=rf"Schedule\.{field} is a {kind.__name__}"):
        omsjax.sample(MODEL, NS, bad, jnp.zeros((2, 3), jnp.float32))


@pytest.mark.parametrize("value", [None, "0.5", {"a": 1}], ids=["None", "str", "dict"])
def test_a_schedule_field_of_another_kind_is_named(value):
    with pytest.raises(ValueError, match=r"^Schedule\.relax is a"):
        omsjax.check_schedule(SCHEDULE._replace(relax=value))


def test_python_scalars_and_numpy_arrays_still_make_a_schedule():
    ok = SCHEDULE._replace(afs=0, ts=np.asarray(SCHEDULE.ts))
    omsjax.check_schedule(ok)
    assert np.all(np.isfinite(np.asarray(omsjax.sample(MODEL, NS, ok, jnp.ones((2, 3), jnp.float32)))))


def _find(**kw):
    args = dict(metric="reference-rmse", key=0, nfe=2, quick=True)
    return find_schedule(MODEL, kw.pop("ns", NS), **{**args, **kw})


def test_find_schedule_names_an_out_that_is_a_file(tmp_path):
    f = tmp_path / "report.txt"
    f.write_text("x")
    with pytest.raises(ValueError, match=rf"^find_schedule: out= {f}: it is a file, not a folder$"):
        _find(out=f)
    with pytest.raises(ValueError, match=rf"^find_schedule: out= {f / 'a' / 'b'}: {f} is a file, not a folder$"):
        _find(out=f / "a" / "b")
    assert f.read_text() == "x"


@pytest.mark.parametrize("ns", ["vp_linear", None, {"kind": "vp_linear"}], ids=["str", "None", "dict"])
def test_find_schedule_names_a_noise_schedule_that_is_not_one(ns, tmp_path):
    with pytest.raises(ValueError, match=r"^noise_schedule must be an omsjax noise schedule, got"):
        _find(ns=ns, out=tmp_path / "never")
    assert not (tmp_path / "never").exists()  # checked before any work, the folder included
