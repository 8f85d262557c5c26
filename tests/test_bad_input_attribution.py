"""Bad input, class 11: attribution. At an enormous guidance scale the guided combination out(uncond) + w
(out(cond) - out(uncond)) overflows while the model's own outputs stay finite; the diagnosis used to blame the
model ("the model returned non-finite values"). It now reruns the step's conditional and unconditional calls
(in the diagnosis program only) and names the combination, the scale and the member; a model that itself returns
NaN under guidance is still named as the cause."""

import jax.numpy as jnp
import numpy as np
import pytest

import omsjax
from omsjax import noise, presets
from omsjax.options import SampleOptions
from omsjax.sampler import first_nonfinite_step

NS = noise.vp_linear()
B = 4
COND, UNCOND = jnp.arange(B, dtype=jnp.int32) % 2, jnp.full((B,), 2, jnp.int32)  # labels 0, 1; 2 = the null label


def _apply(params, x, t, cond):
    # eps = 0.1 x + 0.05 label: the conditional and the unconditional outputs differ by 0.05 (label - 2)
    return 0.1 * x + 0.05 * cond.astype(x.dtype)[:, None]


def _nan_when_guided(params, x, t, cond):
    return jnp.where(t[:, None] < 0.5, jnp.nan, 0.1 * x) + 0.0 * cond.astype(x.dtype)[:, None]


X_T = jnp.asarray(np.random.default_rng(0).standard_normal((B, 3)), jnp.float32)


def _sched(w):
    return presets.with_guidance(presets.ddim(NS, 4), w)


def test_an_overflowing_guided_combination_is_named_not_the_model():
    model = omsjax.Model(_apply, None, name="labels")
    sampling = SampleOptions(cond=COND, uncond=UNCOND)
    found = first_nonfinite_step(model, NS, _sched(3e38), X_T, sampling)
    assert found is not None and (found.cause, found.step, found.model, found.name) == ("guidance", 0, 0, "labels")
    assert found.guidance == pytest.approx(3e38, rel=1e-6)
    assert "the guided combination out(uncond) + w (out(cond) - out(uncond)) at w = 3e+38" in found.message
    assert "'labels''s conditional and unconditional outputs are finite" in found.message
    with pytest.raises(ValueError, match=r"the guided combination .* at w = 3e\+38 became non-finite at step 0"):
        omsjax.generate(model, NS, _sched(3e38), B, (3,), key=0, cond=COND, uncond=UNCOND)
    # The same model at an ordinary scale is finite throughout: nothing to name.
    assert first_nonfinite_step(model, NS, _sched(3.0), X_T, sampling) is None


def test_a_model_that_returns_nan_under_guidance_is_still_the_model():
    model = omsjax.Model(_nan_when_guided, None, name="nan")
    found = first_nonfinite_step(model, NS, _sched(2.0), X_T, SampleOptions(cond=COND, uncond=UNCOND))
    assert found is not None and found.cause == "model" and found.name == "nan" and found.step > 0
    assert "the model returned non-finite values" in found.message
