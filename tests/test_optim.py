"""`omsjax.optim`: the one value_and_grad + optax step and its lax.scan loop, against hand-written iterates."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from omsjax import noise, optim, presets, spacing


def test_minimize_equals_the_closed_form_gradient_descent_iterates():
    # L(x) = sum (x - b)^2 with SGD: x_{k+1} = x_k - lr * 2 (x_k - b); the recorded loss is the one before each step.
    b, lr, steps = jnp.asarray([1.0, -2.0]), 0.1, 5
    x, want_x, want_losses = jnp.zeros(2), np.zeros(2), []
    for _ in range(steps):
        want_losses.append(float(np.sum((want_x - np.asarray(b)) ** 2)))
        want_x = want_x - lr * 2 * (want_x - np.asarray(b))
    loss = lambda x: jnp.sum((x - b) ** 2)  # noqa: E731
    got_x, state, losses = optim.minimize(loss, optax.sgd(lr), x, length=steps)
    np.testing.assert_allclose(np.asarray(got_x), want_x, rtol=1e-12)
    np.testing.assert_allclose(np.asarray(losses), want_losses, rtol=1e-12)


def test_minimize_feeds_one_input_per_step_and_continues_from_a_state():
    # L(x, c) = (x - c)^2: one SGD step with lr 0.5 lands exactly on c.
    loss = lambda x, c: jnp.sum((x - c) ** 2)  # noqa: E731
    tx = optax.sgd(0.5)
    x, state, losses = optim.minimize(loss, tx, jnp.zeros(()), jnp.asarray([3.0, -1.0]))
    assert float(x) == -1.0 and np.asarray(losses).tolist() == [9.0, 16.0]
    x2, _, _ = optim.minimize(loss, tx, x, jnp.asarray([2.0]), opt_state=state, jit=False)
    assert float(x2) == 2.0
    p, _, value = optim.step(loss, tx, jnp.zeros(()), tx.init(jnp.zeros(())), jnp.asarray(4.0))
    assert float(p) == 4.0 and float(value) == 16.0
    with pytest.raises(ValueError, match="length"):
        optim.minimize(loss, tx, jnp.zeros(()))


def test_named_solvers_are_their_presets_and_the_grid_leaves_out_what_does_not_exist():
    ns = noise.vp_linear()
    for name, (kind, kw) in presets.NAMED.items():
        got, want = presets.named(name, ns, 6, skip="karras"), presets.preset(kind, ns, 6, skip="karras", **kw)
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    with pytest.raises(ValueError, match="unknown solver 'DDIM-2'"):
        presets.named("DDIM-2", ns, 6)
    grid = presets.named_grid(ns, 5)
    assert list(grid) == [(n, s) for n in presets.BASELINES for s in spacing.SPACINGS]
    # A third-order multistep solver needs 3 steps: at NFE 2 `named` raises, and the grid leaves out exactly those.
    with pytest.raises(ValueError, match="order 3 needs at least 3 steps"):
        presets.named("UniPC-3 (bh2)", ns, 2)
    third = {"DPM-Solver++(3M)", "UniPC-3 (bh1)", "UniPC-3 (bh2)"}
    want = [(n, s) for n in presets.BASELINES if n not in third for s in spacing.SPACINGS]
    assert list(presets.named_grid(ns, 2)) == want
