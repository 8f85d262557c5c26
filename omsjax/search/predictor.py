"""The schedule predictor (OMS-DPM / S3): a Flax network that scores decoded schedules, lower = better.

Architecture (OMS-DPM's, with USF's decisions added): per step, embeddings of the model (dim 32), order (16),
prediction, corrector, D_1 stencil, relaxation type and the AFS decision (8 each), the relaxation coefficient and
D_2 scale as numbers, sinusoidal embeddings of the step's two log-SNRs (32 each), and, where the space searches
it, an embedding of the step's guidance choice (8) -> MLP (64) -> a one-layer
LSTM (128) over the steps (padding masked) -> masked mean -> L2 normalisation -> MLP [200, 200, 200] -> score.

Training (`fit`): optax Adam on OMS-DPM's pairwise hinge ranking loss (`hinge_loss`: for every pair whose true
FDs differ by more than `threshold`, max(0, margin - (s_worse - s_better)), margin 1) or MSE on log FD
(`mse_loss`). `kendall_tau` (tau-b) measures ranking quality on held-out schedules.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import scipy.stats

from omsjax import optim
from omsjax.search import encoding
from omsjax.search.encoding import Genome
from omsjax.search.space import SearchSpace

__all__ = [
    "PredictorConfig",
    "Features",
    "Predictor",
    "features",
    "init_params",
    "score",
    "hinge_loss",
    "mse_loss",
    "kendall_tau",
    "fit",
    "FitResult",
]

LOSSES = ("hinge", "mse")


@dataclasses.dataclass(frozen=True)
class PredictorConfig:
    """The widths of the ranking predictor (`Predictor`): each step's decisions are embedded, with sinusoidal
    features of its two half log-SNRs, encoded per step by a 2-layer MLP, read by an LSTM and scored by an MLP."""

    model_dim: int = 32  # the embedding of the step's model index
    order_dim: int = 16  # the embedding of its order
    small_dim: int = 8  # the embeddings of prediction, corrector, stencil, relaxation type, AFS and guidance
    time_dim: int = 32  # sinusoidal features of lambda_s and of lambda_t, each
    step_dim: int = 64  # the per-step MLP's width
    hidden: int = 128  # the LSTM's width
    mlp: tuple = (200, 200, 200)  # the hidden widths of the scoring MLP


@dataclasses.dataclass(frozen=True)
class Training:
    """How `fit` trains: `epochs` over the data in minibatches of `batch`, Adam at `lr`, on the ranking `loss` (one
    of LOSSES) with its `threshold` and `margin`."""

    epochs: int = 300
    batch: int = 512
    lr: float = 1e-3
    loss: str = "hinge"
    threshold: float = 0.25
    margin: float = 1.0

    def __post_init__(self):
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.loss!r}")


class Features(NamedTuple):
    """Per-step inputs of the predictor, [..., N] each (the decoded, compacted schedule), and the step mask."""

    model: jax.Array
    order: jax.Array
    prediction: jax.Array
    corrector: jax.Array
    d1: jax.Array
    relax_type: jax.Array
    afs: jax.Array  # broadcast over the steps
    relax: jax.Array
    d2_scale: jax.Array
    lam_s: jax.Array  # log-SNR of the step's start and end, scaled to [0, 1] over the space's range
    lam_t: jax.Array
    mask: jax.Array
    guidance: jax.Array | None = None  # the index of the step's guidance choice, where the space searches it


def features(space: SearchSpace, noise_schedule, g: Genome, bounds=None) -> Features:
    """The predictor's inputs for one genome (pure JAX; vmap over a population); `bounds` (t_start, t_end),
    possibly traced, default the space's."""
    f = jnp.result_type(float)
    bounds = jnp.asarray(space.bounds if bounds is None else bounds, f)
    sched, length = encoding.decode(space, noise_schedule, g, bounds)
    ns = noise_schedule
    lam = ns.lam(sched.ts)
    lam0, lam1 = ns.lam(bounds[0]), ns.lam(bounds[1])
    lam = (lam - lam0) / (lam1 - lam0)
    n = space.num_positions
    return Features(
        model=sched.model,
        order=sched.order,
        prediction=sched.prediction,
        corrector=sched.corrector.astype(jnp.int32),
        d1=sched.d1_points,
        relax_type=sched.relax_type,
        afs=jnp.broadcast_to(sched.afs, (n,)),
        relax=sched.relax,
        d2_scale=sched.d2_scale,
        lam_s=lam[:-1],
        lam_t=lam[1:],
        mask=jnp.arange(n, dtype=jnp.int32) < length,
        guidance=_guidance_index(space, sched.guidance),
    )


def _guidance_index(space: SearchSpace, scales: jax.Array) -> jax.Array | None:
    """The index of each step's scale among the space's guidance choices (None where they are not searched)."""
    if not space.searches_guidance:
        return None
    choices = jnp.asarray(space.guidance_choices, scales.dtype)
    return jnp.argmin(jnp.abs(scales[:, None] - choices[None, :]), axis=1).astype(jnp.int32)


def _sinusoidal(x, dim):
    half = dim // 2
    freqs = jnp.exp(-math.log(1000.0) * jnp.arange(half, dtype=x.dtype) / half)
    a = 100.0 * x[..., None] * freqs
    return jnp.concatenate([jnp.sin(a), jnp.cos(a)], axis=-1)


class Predictor(nn.Module):
    """Scores a batch of `Features` [B, N] -> [B] (lower = better)."""

    num_models: int
    max_order: int
    config: PredictorConfig = PredictorConfig()
    num_guidance: int = 0  # the number of guidance choices (0: not searched, no "guidance" parameters)

    @nn.compact
    def __call__(self, x: Features) -> jax.Array:
        c = self.config
        dt = x.relax.dtype
        parts = [
            nn.Embed(self.num_models, c.model_dim, name="model", param_dtype=dt)(x.model),
            nn.Embed(self.max_order + 2, c.order_dim, name="order", param_dtype=dt)(x.order),
            nn.Embed(2, c.small_dim, name="prediction", param_dtype=dt)(x.prediction),
            nn.Embed(2, c.small_dim, name="corrector", param_dtype=dt)(x.corrector),
            nn.Embed(self.max_order + 1, c.small_dim, name="d1", param_dtype=dt)(x.d1),
            nn.Embed(3, c.small_dim, name="relax_type", param_dtype=dt)(x.relax_type),
            nn.Embed(3, c.small_dim, name="afs", param_dtype=dt)(x.afs),
            jnp.stack([10.0 * x.relax, x.d2_scale, x.lam_t - x.lam_s], axis=-1),
            _sinusoidal(x.lam_s, c.time_dim),
            _sinusoidal(x.lam_t, c.time_dim),
        ]
        if self.num_guidance:
            parts.append(nn.Embed(self.num_guidance, c.small_dim, name="guidance", param_dtype=dt)(x.guidance))
        h = jnp.concatenate([p.astype(dt) for p in parts], axis=-1)
        h = nn.Dense(c.step_dim, param_dtype=dt)(h)
        h = nn.Dense(c.step_dim, param_dtype=dt)(nn.relu(h))
        lengths = jnp.sum(x.mask, axis=-1)
        h = nn.RNN(nn.OptimizedLSTMCell(c.hidden, param_dtype=dt), name="lstm")(h, seq_lengths=lengths)
        m = x.mask[..., None].astype(dt)
        pooled = jnp.sum(h * m, axis=-2) / jnp.maximum(jnp.sum(m, axis=-2), 1.0)
        pooled = pooled / (jnp.linalg.norm(pooled, axis=-1, keepdims=True) + 1e-6)
        for w in c.mlp:
            pooled = nn.relu(nn.Dense(w, param_dtype=dt)(pooled))
        return nn.Dense(1, param_dtype=dt)(pooled)[..., 0]


def _module(space: SearchSpace, config: PredictorConfig) -> Predictor:
    return Predictor(
        num_models=space.num_models, max_order=space.max_order, config=config, num_guidance=len(space.guidance_choices)
    )


# The host-side entry points below are jitted (`space.timeless()` and config static, the end times a traced
# `bounds`): run eagerly, featurising and initialising would compile dozens of small programs, one per operation
# and shape; and searches that differ only in their time range share the programs.
def init_params(space: SearchSpace, noise_schedule, key: jax.Array, config: PredictorConfig = PredictorConfig()):
    """Fresh predictor parameters (initialised on one random genome's features)."""
    return _init_params(space.timeless(), noise_schedule, key, config, _bounds(space, None))


@functools.partial(jax.jit, static_argnames=("space", "config"))
def _init_params(space, noise_schedule, key, config, bounds):
    return _module(space, config).init(
        key, _features(space, noise_schedule, encoding.random_genomes(space, key, 1), bounds)
    )


def _bounds(space: SearchSpace, bounds) -> jax.Array:
    return jnp.asarray(space.bounds if bounds is None else bounds, jnp.result_type(float))


@functools.partial(jax.jit, static_argnames=("space",))
def _features(space: SearchSpace, noise_schedule, pop: Genome, bounds) -> Features:
    """`features` of a population [P]."""
    return jax.vmap(lambda g: features(space, noise_schedule, g, bounds))(pop)


def score(
    space: SearchSpace, noise_schedule, params, pop: Genome, config: PredictorConfig = PredictorConfig(), bounds=None
):
    """Predicted scores of a population [P] (lower = better): decode, featurise, run the network. `bounds`:
    the end times (t_start, t_end), possibly traced (default the space's)."""
    return _score(space.timeless(), noise_schedule, params, pop, config, _bounds(space, bounds))


@functools.partial(jax.jit, static_argnames=("space", "config"))
def _score(space, noise_schedule, params, pop, config, bounds):
    return _module(space, config).apply(params, _features(space, noise_schedule, pop, bounds))


@functools.partial(jax.jit, static_argnames=("module",))
def _apply(module: Predictor, params, x: Features):
    return module.apply(params, x)


def hinge_loss(scores, targets, *, margin: float = 1.0, threshold: float = 0.0):
    """Mean pairwise hinge ranking loss over the pairs (i, j) with targets[j] - targets[i] > threshold:
    max(0, margin - (scores[j] - scores[i])) (the worse schedule j should score at least `margin` higher).
    Pairs with a non-finite difference (inf - inf) are left out; 0 when no pair qualifies."""
    d_t = targets[None, :] - targets[:, None]
    d_s = scores[None, :] - scores[:, None]
    pair = jnp.where(jnp.isnan(d_t), False, d_t > threshold)
    loss = jnp.where(pair, jnp.maximum(0.0, margin - d_s), 0.0)
    return jnp.sum(loss) / jnp.maximum(jnp.sum(pair).astype(loss.dtype), 1.0)


def mse_loss(scores, targets, *, cap: float = 1e3, valid=None):
    """Mean squared error between scores and log(1 + FD) (FD capped at `cap`; inf counts as the cap), over the
    rows where `valid` (bool, default all)."""
    t = jnp.log1p(jnp.minimum(jnp.where(jnp.isnan(targets), cap, targets), cap))
    if valid is None:
        return jnp.mean((scores - t) ** 2)
    w = valid.astype(scores.dtype)
    return jnp.sum(w * (scores - t) ** 2) / jnp.maximum(jnp.sum(w), 1.0)


def kendall_tau(x, y) -> float:
    """Kendall's tau-b between two score vectors (`scipy.stats.kendalltau`); NaN if either is constant. Infinite
    values rank last (inf ties with inf)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"kendall_tau needs two 1-D arrays of one length, got {x.shape} and {y.shape}")
    if np.any(np.isnan(x)) or np.any(np.isnan(y)):
        raise ValueError("kendall_tau: NaN in the inputs")
    if np.all(x == x[0]) or np.all(y == y[0]):  # scipy warns and returns NaN for a constant input
        return float("nan")
    return float(scipy.stats.kendalltau(x, y).statistic)


class FitResult(NamedTuple):
    params: Any
    losses: np.ndarray  # per epoch
    train_tau: float
    heldout_tau: float  # NaN without held-out data


def fit(
    space: SearchSpace,
    noise_schedule,
    genomes: Genome,
    targets,
    key: jax.Array,
    *,
    training: Training = Training(),
    heldout: tuple[Genome, Any] | None = None,
    config: PredictorConfig = PredictorConfig(),
    params=None,
) -> FitResult:
    """Train a predictor on evaluated genomes (targets: their true FDs, inf for diverged ones).

    Each epoch shuffles the data into minibatches of `training.batch`; the whole run is one jitted `lax.scan`.
    Pass `params` to continue from earlier ones (the S3 loop retrains after each stage).
    """
    if not isinstance(training, Training):
        raise ValueError(f"training must be a predictor.Training, got {type(training).__name__}")
    epochs, batch, lr, loss = training.epochs, training.batch, training.lr, training.loss
    threshold, margin = training.threshold, training.margin
    targets = jnp.asarray(targets, jnp.result_type(float))
    n = int(targets.shape[0])
    if n < 2:
        raise ValueError(f"need at least 2 evaluated schedules to train a predictor, got {n}")
    if int(jax.tree_util.tree_leaves(genomes)[0].shape[0]) != n:
        raise ValueError("genomes and targets differ in length")
    k_init, k_shuf = jax.random.split(key)
    if params is None:
        params = init_params(space, noise_schedule, k_init, config)
    # Up to `batch` schedules train full-batch, padded to a bucket (`_padded_size`; the padding rows are left out
    # of the loss), so a search's stages and its held-out tau reuse one compiled program as the data grow.
    size = min(_padded_size(n), batch) if n <= batch else n
    x_all = _features(space.timeless(), noise_schedule, _pad(genomes, size), _bounds(space, None))
    valid = jnp.arange(size) < n
    t_pad = jnp.concatenate([targets, jnp.full((size - n,), jnp.nan, targets.dtype)])
    module = _module(space, config)
    params, losses = _train(
        params,
        k_shuf,
        x_all,
        t_pad,
        valid,
        module=module,
        epochs=epochs,
        bsz=min(batch, size),
        lr=lr,
        loss=loss,
        margin=margin,
        threshold=threshold,
    )
    train_tau = kendall_tau(np.asarray(_apply(module, params, x_all))[:n], np.asarray(targets))
    ho_tau = float("nan")
    if heldout is not None:
        g_ho, t_ho = heldout
        m = int(np.shape(t_ho)[0])
        pred = score(space, noise_schedule, params, _pad(g_ho, _padded_size(m)), config)
        ho_tau = kendall_tau(np.asarray(pred)[:m], np.asarray(t_ho))
    return FitResult(params, np.asarray(losses), train_tau, ho_tau)


def _padded_size(n: int, least: int = 128) -> int:
    """The bucket of `n` rows: the next power of two, at least `least`."""
    return max(least, 1 << (n - 1).bit_length())


def _pad(pop: Genome, size: int) -> Genome:
    """`pop` [P] padded to [size] rows by repeating its first (host-side: no program per shape)."""
    idx = np.concatenate([np.arange(_rows(pop)), np.zeros(size - _rows(pop), np.int64)])
    return jax.tree.map(lambda a: jnp.asarray(np.asarray(a)[idx]), pop)


def _rows(pop: Genome) -> int:
    return int(jax.tree_util.tree_leaves(pop)[0].shape[0])


@functools.partial(jax.jit, static_argnames=("module", "epochs", "bsz", "lr", "loss", "margin", "threshold"))
def _train(params, key, x_all, targets, valid, *, module, epochs, bsz, lr, loss, margin, threshold):
    """`fit`'s training run, one compiled program per (network, data size, settings): the data are arguments, so
    the search's later stages and a second search of the same shapes reuse it. Rows not `valid` (padding, target
    NaN) are left out of the loss."""
    tx = optax.adam(lr)
    n = targets.shape[0]
    nb = n // bsz

    def loss_fn(p, idx):  # one minibatch: the rows `idx` of the data
        s = module.apply(p, jax.tree.map(lambda a: a[idx], x_all))
        if loss == "hinge":  # a NaN target is in no pair
            return hinge_loss(s, targets[idx], margin=margin, threshold=threshold)
        return mse_loss(s, targets[idx], valid=valid[idx])

    def epoch(carry, k):
        perm = jax.random.permutation(k, n)[: nb * bsz].reshape(nb, bsz)
        p, o, vals = optim.minimize(loss_fn, tx, carry[0], perm, opt_state=carry[1], jit=False)
        return (p, o), jnp.mean(vals)

    (p, _), losses = jax.lax.scan(epoch, (params, tx.init(params)), jax.random.split(key, epochs))
    return p, losses
