"""`search.candidates`: many schedules sampled from the same noise equal `omsjax.sample` of each, one compiled
program per length whatever the count, and the samples split over several devices."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from search_cases import NS, tiny_zoo

import omsjax
from omsjax import presets
from omsjax.search import candidates as CAND
from omsjax.search.candidates import sample_candidates

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def tiny():
    return tiny_zoo()


def test_sample_candidates_matches_sample(tiny):
    x_T = omsjax.sampler.noise(0, 6, (8, 8, 1), jnp.float64)
    scheds = [presets.ddim(NS, 3, model=1), presets.unipc(NS, 3, 2, model=1, skip="time_uniform"),
              presets.dpm_solver_pp(NS, 2, 2, model=1, afs="zero_x0")]  # fmt: skip
    mixed = [s._replace(model=jnp.asarray([0, 1, 0], jnp.int32)) for s in scheds]
    for group, method in ((scheds, "vmap"), (mixed, "map")):
        out = sample_candidates(tiny, NS, group, x_T, method=method, chunk=2)
        for s, x in zip(group, out, strict=True):
            np.testing.assert_allclose(x, np.asarray(omsjax.sample(tiny, NS, s, x_T)), rtol=1e-10, atol=1e-10)
    with pytest.raises(ValueError, match="candidate 1: Schedule.model"):
        sample_candidates(tiny, NS, [scheds[0], scheds[0]._replace(model=jnp.asarray([0, 5, 0]))], x_T)


def test_sample_candidates_one_program_per_length_whatever_the_count(tiny):
    """1, 3 and 5 candidates at chunk 4 run one compiled program (short chunks are padded), and padding changes
    no candidate's samples."""
    x_T = omsjax.sampler.noise(3, 7, (8, 8, 1), jnp.float64)  # a batch no other test uses: a fresh cache entry
    scheds = [presets.ddim(NS, 3, model=1), presets.unipc(NS, 3, 2, model=1, skip="time_uniform"),
              presets.dpm_solver_pp(NS, 3, 2, model=1), presets.ddim(NS, 3, model=1, skip="logSNR"),
              presets.dpm_solver_pp(NS, 3, 3, model=1)]  # fmt: skip
    before = CAND._program._cache_size()
    outs = [sample_candidates(tiny, NS, scheds[:n], x_T, chunk=4) for n in (1, 3, 5)]
    assert CAND._program._cache_size() == before + 1
    for out in outs:
        np.testing.assert_array_equal(out, outs[-1][: len(out)])


@pytest.mark.slow  # a subprocess with four host devices: it compiles everything again (about 40 s on 2 cores)
def test_evaluation_splits_samples_over_devices(tmp_path):
    script = f"""
    import jax, numpy as np, jax.numpy as jnp
    jax.config.update("jax_enable_x64", True)
    import sys; sys.path.insert(0, {str(REPO / "tests")!r})
    from search_cases import tiny_zoo, NS
    import omsjax
    from omsjax import presets
    from omsjax.search import candidates as CAND
    assert len(jax.devices()) == 4
    zoo = tiny_zoo()
    x_T = omsjax.sampler.noise(0, 5, (8, 8, 1), jnp.float64)  # 5 samples: padded to 8, two per device
    scheds = [presets.ddim(NS, 3, model=1), presets.unipc(NS, 3, 2, model=1), presets.dpm_solver_pp(NS, 3, 2, model=1)]
    assert CAND.choose_layout(5) == (4, 1) and CAND.choose_layout(128) == (1, 4)  # MIN_ROWS = 32 per device
    out = CAND.sample_candidates(zoo, NS, scheds, x_T, chunk=2)  # chunks of 2 and 1, padded to 4 (cand = 4)
    for layout in [(1, 4), (2, 2)]:  # samples over 4 devices (5 padded to 8), or 2 x 2: the same samples
        placed = CAND.place(x_T, None, CAND.Layout(*layout))
        # (XLA may vectorise another per-device batch differently: equal to float64 rounding, not bit for bit)
        np.testing.assert_allclose(CAND.run_candidates(zoo, NS, scheds, placed, chunk=2), out, rtol=1e-12, atol=1e-12)
    mixed = [s._replace(model=jnp.asarray([0, 1, 1], jnp.int32)) for s in scheds]
    out_m = CAND.sample_candidates(zoo, NS, mixed, x_T, method="map", chunk=3)
    assert out.shape == out_m.shape == (3, 5, 8, 8, 1)
    for s, x in zip(scheds + mixed, list(out) + list(out_m)):
        np.testing.assert_allclose(x, np.asarray(omsjax.sample(zoo, NS, s, x_T)), rtol=1e-10, atol=1e-10)
    # Conditioning is split with the samples: 6 guided samples, padded to 8.
    import test_models_guidance as G
    guided = [presets.ddim(G.NS, 4, guidance=3.0), presets.unipc(G.NS, 4, 2, guidance=2.0)]
    out_g = CAND.sample_candidates(G.NOISE_MODEL, G.NS, guided, G.X_T, sampling=omsjax.SampleOptions(G.COND, G.UNCOND))
    for s, x in zip(guided, out_g):
        want = omsjax.sample(G.NOISE_MODEL, G.NS, s, G.X_T, cond=G.COND, uncond=G.UNCOND)
        np.testing.assert_allclose(x, np.asarray(want), rtol=1e-10, atol=1e-10)
    print("OK")
    """
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=4",
    }
    res = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], env=env, capture_output=True, text=True,
                         timeout=300, cwd=REPO)  # fmt: skip
    assert res.returncode == 0 and "OK" in res.stdout, res.stderr[-4000:]
