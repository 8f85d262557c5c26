"""Pictures: sample grids and timestep plots, written atomically (`save`: rendered in memory in the format the
file's suffix names, then `files.write_bytes`), so a killed run leaves the old picture or the new one, never a
truncated file."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np

from omsjax import files

__all__ = [
    "image_grid",
    "save",
    "save_grid",
    "timesteps_plot",
    "fd_accuracy",
    "pareto_front",
    "search_pareto",
    "side_by_side",
    "scatter",
]


def _format(path: Path) -> str:
    return path.suffix.lstrip(".").lower() or "png"


def save(fig, path, **savefig_kw) -> Path:
    """Write the matplotlib figure `fig` to `path` atomically, in the format of its suffix (PNG without one);
    `savefig_kw` go to `fig.savefig` (e.g. `dpi`). The folder is created. Returns the path."""
    path = Path(path)
    buf = io.BytesIO()
    fig.savefig(buf, format=_format(path), **savefig_kw)
    path.parent.mkdir(parents=True, exist_ok=True)
    return files.write_bytes(path, buf.getvalue())


def image_grid(images, ncols: int | None = None, pad: int = 1) -> np.ndarray:
    """Tile images [N, H, W, C] in [-1, 1] into one [rows*(H+pad)+pad, cols*(W+pad)+pad, C] array in [0, 1]."""
    x = np.asarray(images, np.float64)
    if x.ndim != 4 or x.shape[0] < 1:
        raise ValueError(f"image_grid needs images [N, H, W, C], got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError("image_grid: images contain NaN or inf")
    n, h, w, c = x.shape
    ncols = ncols or math.ceil(math.sqrt(n))
    nrows = math.ceil(n / ncols)
    grid = np.ones((nrows * (h + pad) + pad, ncols * (w + pad) + pad, c))
    x = (np.clip(x, -1.0, 1.0) + 1.0) / 2.0  # display only
    for i in range(n):
        r, k = divmod(i, ncols)
        grid[pad + r * (h + pad) : pad + r * (h + pad) + h, pad + k * (w + pad) : pad + k * (w + pad) + w] = x[i]
    return grid


def save_grid(images, path, ncols: int | None = None, scale: int = 8) -> Path:
    """Write a grid of images [N, H, W, C] in [-1, 1] (grey for C = 1), each pixel `scale` x `scale`, atomically
    (PNG, or the format of the path's suffix)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = image_grid(images, ncols)
    grid = np.repeat(np.repeat(grid, scale, axis=0), scale, axis=1)
    path = Path(path)
    buf = io.BytesIO()
    if grid.shape[-1] == 1:
        plt.imsave(buf, grid[..., 0], cmap="gray", vmin=0.0, vmax=1.0, format=_format(path))
    else:
        plt.imsave(buf, grid[..., :3], format=_format(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    return files.write_bytes(path, buf.getvalue())


def timesteps_plot(noise_schedule, schedules: dict, path, title: str = "") -> Path:
    """Plot each named schedule's times (log-SNR lambda against the step index) into a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not schedules:
        raise ValueError("timesteps_plot needs at least one schedule")
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, ts in schedules.items():
        ts = np.asarray(ts, np.float64)
        ax.plot(np.arange(len(ts)), np.asarray(noise_schedule.lam(ts)), marker="o", label=name)
    ax.set_xlabel("step")
    ax.set_ylabel("log-SNR lambda")
    ax.legend(fontsize=8)
    return _finish(fig, ax, title, path)


def fd_accuracy(fd, accuracy, scales, path, title: str = "") -> Path:
    """The FD-accuracy trade-off of classifier-free guidance: one point per guidance scale (FD on x, lower is
    better; accuracy on y, higher is better), joined in order of the scale and labelled with it; a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fd, accuracy, scales = (np.asarray(v, np.float64) for v in (fd, accuracy, scales))
    if not fd.shape == accuracy.shape == scales.shape or fd.ndim != 1 or fd.size == 0:
        raise ValueError(
            f"fd, accuracy and scales must be non-empty and of one length, got shapes {fd.shape}, "
            f"{accuracy.shape}, {scales.shape}"
        )
    fig, ax = plt.subplots(figsize=(5.5, 4))
    ax.plot(fd, 100 * accuracy, marker="o")
    for f, a, w in zip(fd, accuracy, scales, strict=True):
        ax.annotate(f"w={w:g}", (f, 100 * a), textcoords="offset points", xytext=(5, -10), fontsize=8)
    ax.set_xlabel("FD (classifier features, lower is better)")
    ax.set_ylabel("accuracy of the requested class (%)")
    return _finish(fig, ax, title, path)


def pareto_front(points) -> list[tuple[float, float]]:
    """The (cost, score) points no other point beats on both (lower is better on both), by cost."""
    front, best = [], math.inf
    for c, v in sorted((c, v) for c, v in points if math.isfinite(v)):
        if v < best:
            front.append((c, v))
            best = v
    return front


def search_pareto(
    points,
    chosen,
    path,
    *,
    xlabel: str,
    ylabel: str,
    title: str = "",
    jitter: bool = False,
    best_baseline: float | None = None,
) -> Path:
    """A search's candidates: `points` [(cost, score, is_baseline)] (lower is better on both; inf scores, diverged,
    are left out and counted in the legend), the Pareto front of all of them as a step line, the baselines as
    crosses and `chosen` (cost, score) as a star; a log score axis. `jitter`: spread points of one cost sideways
    (solver mode, where every candidate has the same NFE). `best_baseline`: the best baseline's score, drawn as a
    dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = [(float(c), float(v), bool(b)) for c, v, b in points]
    ok = [p for p in pts if math.isfinite(p[1])]
    if not ok:
        raise ValueError("search_pareto: no finite score to plot")
    rng = np.random.RandomState(0)
    dx = (lambda n: rng.uniform(-0.3, 0.3, n)) if jitter else (lambda n: np.zeros(n))  # noqa: E731
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for is_base, style in (
        (False, dict(s=10, alpha=0.5, label="searched candidates")),
        (True, dict(marker="x", color="k", s=30, label="baselines (presets, +AFS)")),
    ):
        sel = np.asarray([(c, v) for c, v, b in ok if b == is_base], float).reshape(-1, 2)
        if len(sel):
            ax.scatter(sel[:, 0] + dx(len(sel)), sel[:, 1], **style)
    front = np.asarray(pareto_front([(c, v) for c, v, _ in ok]), float)
    ax.step(front[:, 0], front[:, 1], where="post", color="tab:green", lw=1.2, label="Pareto front")
    if best_baseline is not None and math.isfinite(best_baseline):
        ax.axhline(best_baseline, color="k", ls="--", lw=1, label=f"best baseline ({best_baseline:.4g})")
    ax.scatter([chosen[0]], [chosen[1]], marker="*", s=200, color="r", zorder=5, label=f"returned ({chosen[1]:.4g})")
    ax.set_yscale("log")
    ax.set_xlabel(xlabel + (" (jittered)" if jitter else ""))
    ax.set_ylabel(f"{ylabel} (lower is better)")
    if len(pts) > len(ok):
        ax.plot([], [], " ", label=f"{len(pts) - len(ok)} diverged (not shown)")
    ax.legend(fontsize=7)
    return _finish(fig, ax, title, path)


def side_by_side(panels: dict, path, *, title: str = "", scale: int = 8) -> Path:
    """Image grids side by side, one per entry of `panels` {panel title: images [N, H, W, C] in [-1, 1]}."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not panels:
        raise ValueError("side_by_side needs at least one panel")
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 4.2), squeeze=False)
    for ax, (name, images) in zip(axes[0], panels.items(), strict=True):
        grid = image_grid(images)
        ax.imshow(
            grid[..., 0] if grid.shape[-1] == 1 else grid[..., :3],
            cmap="gray",
            vmin=0.0,
            vmax=1.0,
            interpolation="nearest",
        )
        ax.set_title(name, fontsize=8)
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    try:
        return save(fig, path, dpi=max(60, 12 * scale))
    finally:
        plt.close(fig)


def scatter(sets: dict, path, *, title: str = "", max_points: int = 2000) -> Path:
    """2-D samples as points, one colour per entry of `sets` {label: samples [N, 2]} (e.g. searched, baseline and
    data), drawn in order, each thinned to its first `max_points`; a PNG (or the suffix's format)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not sets:
        raise ValueError("scatter needs at least one set of samples")
    arrays = {}
    for name, pts in sets.items():
        pts = np.asarray(pts, np.float64)
        if pts.ndim != 2 or pts.shape[1] != 2 or pts.shape[0] < 1:
            raise ValueError(f"scatter: {name!r} must be 2-D samples [N, 2], got shape {pts.shape}")
        arrays[name] = pts[:max_points]
    fig, ax = plt.subplots(figsize=(5, 5))
    for name, pts in arrays.items():
        ax.scatter(pts[:, 0], pts[:, 1], s=4, alpha=0.5, label=f"{name} ({len(pts)})")
    ax.set_aspect("equal", adjustable="datalim")
    ax.legend(fontsize=8, markerscale=3)
    return _finish(fig, ax, title, path)


def _finish(fig, ax, title: str, path) -> Path:
    """Title, grid and tight layout of a one-axes plot; written to `path` (PNG at 100 dpi) and closed."""
    import matplotlib.pyplot as plt

    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    try:
        return save(fig, path, dpi=100)
    finally:
        plt.close(fig)
