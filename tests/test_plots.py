"""Sample grids and plots."""

import numpy as np
import pytest

from omsjax import plots


def test_grid_layout_and_range():
    imgs = np.stack([np.full((2, 3, 1), v) for v in (-1.0, 0.0, 1.0, 0.5, -0.5)])
    g = plots.image_grid(imgs, ncols=3, pad=1)
    assert g.shape == (2 * 3 + 1, 3 * 4 + 1, 1)
    np.testing.assert_allclose(g[1:3, 1:4, 0], 0.0)  # -1 -> black
    np.testing.assert_allclose(g[1:3, 5:8, 0], 0.5)
    np.testing.assert_allclose(g[4:6, 1:4, 0], 0.75)  # 0.5 -> 0.75
    np.testing.assert_allclose(g[4:6, 9:12, 0], 1.0)  # empty cell stays white


def test_save_grid_png(tmp_path):
    path = plots.save_grid(np.zeros((4, 8, 8, 1)), tmp_path / "g.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_grid_errors():
    with pytest.raises(ValueError, match=r"needs images \[N, H, W, C\]"):
        plots.image_grid(np.zeros((8, 8)))
    with pytest.raises(ValueError, match="NaN or inf"):
        plots.image_grid(np.full((1, 2, 2, 1), np.nan))


def test_fd_accuracy_plot(tmp_path):
    path = plots.fd_accuracy([5.0, 4.0, 9.0], [0.1, 0.9, 1.0], [0, 1, 4], tmp_path / "fa.png", title="t")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="of one length"):
        plots.fd_accuracy([1.0, 2.0], [0.5], [0, 1], tmp_path / "bad.png")


def test_pareto_front_keeps_the_points_nothing_beats_on_both():
    pts = [(3.0, 1.0), (1.0, 5.0), (2.0, 2.0), (2.0, 4.0), (4.0, 1.5), (1.5, float("inf"))]
    assert plots.pareto_front(pts) == [(1.0, 5.0), (2.0, 2.0), (3.0, 1.0)]


def test_search_pareto_and_side_by_side_write_pngs(tmp_path):
    pts = [(5, 2.0, False), (5, 1.0, True), (5, float("inf"), False), (6, 0.5, False)]
    p = plots.search_pareto(pts, (5, 0.9), tmp_path / "p.png", xlabel="NFE", ylabel="score", title="t", jitter=True,
                            best_baseline=1.0)  # fmt: skip
    assert p.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="no finite score"):
        plots.search_pareto([(5, float("inf"), False)], (5, 1.0), tmp_path / "q.png", xlabel="x", ylabel="y")
    s = plots.side_by_side({"a": np.zeros((4, 8, 8, 1)), "b": np.ones((4, 8, 8, 1))}, tmp_path / "s.png", title="t")
    assert s.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="at least one panel"):
        plots.side_by_side({}, tmp_path / "e.png")


def test_scatter_draws_2d_sample_sets_and_names_a_bad_one(tmp_path):
    r = np.random.default_rng(0)
    p = plots.scatter({"searched": r.normal(size=(50, 2)), "data": r.normal(size=(3000, 2))}, tmp_path / "s.png",
                      title="t", max_points=100)  # fmt: skip
    assert p.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="'baseline' must be 2-D samples"):
        plots.scatter({"baseline": np.zeros((5, 3))}, tmp_path / "b.png")
    assert not (tmp_path / "b.png").exists()
