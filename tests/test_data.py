"""Digits split and the loaders for a user's own images."""

import numpy as np
import pytest

from omsjax import data


def test_digits_split():
    tr, ytr = data.load_digits("train", return_labels=True)
    ho, yho = data.load_digits("heldout", return_labels=True)
    al = data.load_digits("all")
    assert tr.shape == (1497, 8, 8, 1) and ho.shape == (300, 8, 8, 1) and tr.dtype == np.float32
    assert tr.min() == -1.0 and tr.max() == 1.0
    rows = {r.tobytes() for r in al.reshape(len(al), -1)}
    assert {r.tobytes() for r in np.concatenate([tr, ho]).reshape(1797, -1)} == rows
    assert set(ytr) == set(yho) == set(range(10))
    np.testing.assert_array_equal(tr, data.load_digits("train"))  # deterministic
    with pytest.raises(ValueError, match="unknown digits split"):
        data.load_digits("test")


def test_load_array(tmp_path):
    u8 = np.random.RandomState(0).randint(0, 256, (5, 4, 4), np.uint8)
    np.save(tmp_path / "a.npy", u8)
    a = data.load_array(tmp_path / "a.npy")
    assert a.shape == (5, 4, 4, 1) and a.dtype == np.float32
    np.testing.assert_allclose(a[..., 0], u8 / 127.5 - 1, rtol=1e-6)
    f = np.linspace(0, 1, 2 * 4 * 4 * 3).reshape(2, 4, 4, 3)
    np.savez(tmp_path / "b.npz", images=f, other=np.zeros(3))
    b = data.load_array(tmp_path / "b.npz", key="images", value_range=(0, 1))
    np.testing.assert_allclose(b, f * 2 - 1, rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="choose one with key="):
        data.load_array(tmp_path / "b.npz")
    with pytest.raises(ValueError, match="must lie in \\[-1, 1\\]"):
        data._to_images(f * 3, "x")
    nan = f.copy()
    nan[0, 0, 0, 0] = np.nan
    np.save(tmp_path / "n.npy", nan)
    with pytest.raises(ValueError, match="1 value\\(s\\) are NaN or inf"):
        data.load_array(tmp_path / "n.npy")
    np.save(tmp_path / "s.npy", np.zeros((3, 4)))
    with pytest.raises(ValueError, match="expected images"):
        data.load_array(tmp_path / "s.npy")
    np.save(tmp_path / "c.npy", np.zeros((2, 4, 4), bool))
    with pytest.raises(ValueError, match="unsupported dtype bool"):
        data.load_array(tmp_path / "c.npy")
    with pytest.raises(FileNotFoundError, match="no such image file"):
        data.load_array(tmp_path / "missing.npy")
    (tmp_path / "x.png").write_bytes(b"")
    with pytest.raises(ValueError, match="unsupported extension"):
        data.load_array(tmp_path / "x.png")


@pytest.mark.parametrize("name", ["img.idx", "img.idx.gz"])
def test_idx_round_trip(tmp_path, name):
    imgs = np.random.RandomState(1).randint(0, 256, (6, 5, 4), np.uint8)
    labels = np.arange(6, dtype=np.uint8)
    data.save_idx(tmp_path / name, imgs)
    data.save_idx(tmp_path / ("lab" + name), labels)
    out = data.load_idx_images(tmp_path / name)
    assert out.shape == (6, 5, 4, 1)
    np.testing.assert_allclose(out[..., 0], imgs / 127.5 - 1, rtol=1e-6)
    np.testing.assert_array_equal(data.load_idx_labels(tmp_path / ("lab" + name)), np.arange(6))


def test_idx_errors(tmp_path):
    p = data.save_idx(tmp_path / "t.idx", np.zeros((4, 3, 3), np.uint8))
    p.write_bytes(p.read_bytes()[:-2])
    with pytest.raises(ValueError, match="promises 36 data bytes"):
        data.load_idx(p)
    (tmp_path / "bad.idx").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(ValueError, match="bad magic"):
        data.load_idx(tmp_path / "bad.idx")
    data.save_idx(tmp_path / "l.idx", np.zeros((4, 3, 3), np.uint8))
    with pytest.raises(ValueError, match="expected 1-D integer labels"):
        data.load_idx_labels(tmp_path / "l.idx")


def test_data_mean():
    x = np.stack([np.full((2, 2, 1), v, np.float32) for v in (-1.0, 0.0, 0.5)])
    np.testing.assert_allclose(data.data_mean(x), np.full((2, 2, 1), -1 / 6), rtol=1e-6)
