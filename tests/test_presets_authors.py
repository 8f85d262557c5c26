"""Presets against the authors' own PyTorch samplers (LuChengTHU/dpm-solver, wl-zhao/UniPC) on an exact GMM.

`data/solver_references.npz` holds their float64 outputs (see ../shared/data/README.md): every key is checked.
"""

from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

import omsjax
from omsjax import noise, oracles, presets

DATA = np.load(Path(__file__).parent / "data" / "solver_references.npz")
KEYS = sorted(k for k in DATA.files if "/" in k)


@pytest.fixture(scope="module")
def setup():
    ns = noise.vp_linear()
    gmm = oracles.GaussianMixture.create(DATA["gmm_means"], DATA["gmm_stds"], DATA["gmm_weights"])
    return ns, gmm.model(ns), jnp.asarray(DATA["x_T"])


def _preset_for(key, ns):
    parts = key.split("/")
    family, order, skip, nfe = parts[0], int(parts[1][1:]), parts[-2], int(parts[-1][1:])
    if family == "dpm_solver_pp":
        return presets.dpm_solver_pp(ns, nfe, order, skip=skip)
    if family == "dpm_solver":
        return presets.dpm_solver(ns, nfe, order, skip=skip)
    assert family == "unipc"
    return presets.unipc(ns, nfe, order, variant=parts[2], skip=skip)


def test_every_family_is_covered():
    families = {"/".join(k.split("/")[:-2]) for k in KEYS}
    assert len(KEYS) == 144
    assert families == {
        *(f"dpm_solver/o{k}" for k in (1, 2, 3)),
        *(f"dpm_solver_pp/o{k}" for k in (1, 2, 3)),
        *(f"unipc/o{k}/{v}" for k in (1, 2, 3) for v in ("bh1", "bh2")),
    }


@pytest.mark.parametrize("key", KEYS)
def test_matches_authors_implementation(setup, key):
    ns, model, x_T = setup
    schedule = _preset_for(key, ns)
    out = np.asarray(omsjax.sample(model, ns, schedule, x_T))
    ref = DATA[key]
    rel = np.max(np.abs(out - ref)) / np.max(np.abs(ref))
    assert rel <= 1e-10, f"{key}: relative error {rel:.3e}"
