"""The one gradient-descent step of omsjax, and its loop as one `lax.scan`.

For a loss L(params, *inputs) and an optax transformation `tx`, one step is

    value, g = value_and_grad(L)(params, *inputs)
    updates, opt_state = tx.update(g, opt_state, params)
    params = optax.apply_updates(params, updates)

`step` is that step (pure; jit it or call it inside a jitted function). `minimize` runs it over per-step inputs
`xs` (random keys, minibatch indices, ...) or `length` times without inputs, as one jitted `lax.scan`, and returns
the final parameters, the optimiser state and the loss of every step. The timestep fits, the FD objective, the
ranking predictor, the FD classifier and the diffusion training steps all use `step`.

optax's bias correction mixes Python floats with integer step counts, so the update runs under JAX's "standard"
dtype promotion (the test suite turns on "strict" promotion).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import optax

from omsjax.fields import count

__all__ = ["step", "minimize"]


def step(loss: Callable, tx: optax.GradientTransformation, params: Any, opt_state: Any, *inputs: Any):
    """One step: (new params, new optimiser state, the loss at `params`). `loss(params, *inputs) -> scalar`."""
    value, grads = jax.value_and_grad(loss)(params, *inputs)
    with jax.numpy_dtype_promotion("standard"):
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
    return params, opt_state, value


def minimize(
    loss: Callable,
    tx: optax.GradientTransformation,
    params: Any,
    xs: Any = None,
    *,
    length: int | None = None,
    opt_state: Any = None,
    jit: bool = True,
):
    """Run `step` once per leading index of `xs` (`loss(params, x)`), or `length` times (`loss(params)`) when
    `xs` is None, as one `lax.scan`, jitted unless `jit=False` (to nest it inside another traced loop).

    Returns (params, opt_state, losses[steps]); `opt_state` defaults to `tx.init(params)`.
    """
    if xs is None:
        length = count("minimize: length (without per-step inputs xs)", length, 0)

    def run(params, opt_state, xs):
        if opt_state is None:
            opt_state = tx.init(params)

        def body(carry, x):
            p, s = carry
            p, s, value = step(loss, tx, p, s) if xs is None else step(loss, tx, p, s, x)
            return (p, s), value

        (params, opt_state), values = jax.lax.scan(body, (params, opt_state), xs, length=length)
        return params, opt_state, values

    return (jax.jit(run) if jit else run)(params, opt_state, xs)
