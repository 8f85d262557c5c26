"""Digits split and the loaders for a user's own images (npy/npz, IDX)."""

import collections
import gzip

import numpy as np
import pytest

from omsjax import data


def _rows(images, labels):
    """Multiset of (image bytes, label): duplicates in the data are counted, not merged."""
    return collections.Counter((im.tobytes(), int(y)) for im, y in zip(images, labels, strict=True))


def test_digits_split():
    tr, ytr = data.load_digits("train", return_labels=True)
    ho, yho = data.load_digits("heldout", return_labels=True)
    al, yal = data.load_digits("all", return_labels=True)
    assert tr.shape == (1497, *data.DIGITS_SHAPE) and ho.shape == (data.DIGITS_HELDOUT, 8, 8, 1)
    assert al.shape == (1797, 8, 8, 1)
    assert tr.dtype == ho.dtype == al.dtype == np.float32 and ytr.dtype == np.int64
    for x in (tr, ho, al):
        assert x.min() == -1.0 and x.max() == 1.0
    np.testing.assert_array_equal(np.unique(al * 8 + 8), np.arange(17))  # x / 8 - 1 of the integers 0..16
    # the split is the documented one: RandomState(0) permutation, first 300 held out
    perm = np.random.RandomState(0).permutation(1797)
    assert len(np.unique(perm[:300])) + len(np.unique(perm[300:])) == 1797
    np.testing.assert_array_equal(ho, al[perm[:300]])
    np.testing.assert_array_equal(tr, al[perm[300:]])
    np.testing.assert_array_equal(yho, yal[perm[:300]])
    assert _rows(np.concatenate([tr, ho]), np.concatenate([ytr, yho])) == _rows(al, yal)
    assert set(ytr.tolist()) == set(yho.tolist()) == set(range(10))
    # against scikit-learn itself, in original order
    from sklearn.datasets import load_digits as sk_load

    sk = sk_load()
    np.testing.assert_array_equal(al[..., 0], (sk.images / 8 - 1).astype(np.float32))
    np.testing.assert_array_equal(yal, sk.target)


def test_digits_deterministic_copies_and_dtype():
    a, ya = data.load_digits("train", return_labels=True)
    a[:] = 5.0
    ya[:] = -1
    b, yb = data.load_digits("train", return_labels=True)
    assert b.max() == 1.0 and yb.min() == 0  # mutating a result does not touch the cache
    np.testing.assert_array_equal(b, data.load_digits("train"))
    assert data.load_digits("heldout", dtype=np.float64).dtype == np.float64
    with pytest.raises(ValueError, match=r"unknown digits split 'test'.*'train', 'heldout', 'all'"):
        data.load_digits("test")


def test_load_array_round_trips(tmp_path):
    u8 = np.random.RandomState(0).randint(0, 256, (5, 4, 4), np.uint8)
    u8[0, 0, 0], u8[0, 0, 1] = 0, 255
    np.save(tmp_path / "a.npy", u8)
    a = data.load_array(tmp_path / "a.npy")
    assert a.shape == (5, 4, 4, 1) and a.dtype == np.float32
    assert a.min() == -1.0 and a.max() == 1.0
    np.testing.assert_allclose(a[..., 0], u8 / 127.5 - 1, rtol=0, atol=1e-6)

    f = np.linspace(-1, 1, 2 * 4 * 4 * 3).reshape(2, 4, 4, 3)
    np.savez(tmp_path / "one.npz", f)
    np.testing.assert_array_equal(data.load_array(tmp_path / "one.npz"), f.astype(np.float32))  # passthrough

    g = (f + 1) / 2 * 255  # floats in 0..255
    np.savez(tmp_path / "two.npz", images=g, other=np.zeros(3))
    b = data.load_array(tmp_path / "two.npz", key="images", value_range=(0, 255))
    assert b.dtype == np.float32 and b.shape == (2, 4, 4, 3)
    np.testing.assert_allclose(b, f, rtol=0, atol=1e-6)

    u16 = np.array([[[0, 1000], [2000, 4000]]], np.uint16)  # integers with their own range
    np.save(tmp_path / "u16.npy", u16)
    c = data.load_array(tmp_path / "u16.npy", value_range=(0, 4000))
    np.testing.assert_allclose(c[..., 0], u16 / 2000 - 1, rtol=0, atol=1e-6)


def _save(tmp_path, name, arr):
    np.save(tmp_path / name, arr)
    return tmp_path / name


@pytest.mark.parametrize(
    ("arr", "kwargs", "match"),
    [
        (np.zeros((3, 4)), {}, r"expected images \[N, H, W\] or \[N, H, W, C\].*shape \(3, 4\)"),
        (np.zeros((2, 4, 4, 5)), {}, r"C in 1\.\.4, got shape \(2, 4, 4, 5\)"),
        (np.zeros((1, 2, 2, 2, 1)), {}, r"expected images"),
        (np.zeros((2, 4, 4), bool), {}, r"unsupported dtype bool"),
        (np.zeros((2, 4, 4), np.complex64), {}, r"unsupported dtype complex64"),
        (np.array([["a"]] * 2), {}, r"unsupported dtype <U1"),
        (np.zeros((0, 4, 4), np.uint8), {}, r"the array is empty"),
        (np.full((2, 2, 2), 1.5), {}, r"float images must lie in \[-1, 1\], got 1\.5\.\.1\.5; pass value_range"),
        (np.full((2, 2, 2), 3.0), {"value_range": (0, 2)}, r"values 3\.\.3 fall outside value_range \(0, 2\)"),
        (np.zeros((2, 2, 2)), {"value_range": (1, 1)}, r"value_range needs finite lo < hi"),
        (np.zeros((2, 2, 2)), {"value_range": 3}, r"value_range must be a pair"),
        (np.full((2, 2, 2), 300, np.int32), {}, r"integer images must lie in 0\.\.255, got 300\.\.300"),
        (np.full((2, 2, 2), -3, np.int8), {}, r"integer images must lie in 0\.\.255, got -3\.\.-3"),
    ],
)
def test_load_array_rejects(tmp_path, arr, kwargs, match):
    with pytest.raises(ValueError, match=match):
        data.load_array(_save(tmp_path, "x.npy", arr), **kwargs)


def test_load_array_nonfinite_counted(tmp_path):
    f = np.zeros((2, 3, 3, 1), np.float32)
    f[0, 0, 0, 0], f[1, 1, 1, 0], f[1, 2, 2, 0] = np.nan, np.inf, -np.inf
    with pytest.raises(ValueError, match=r"3 of 18 values are NaN or inf"):
        data.load_array(_save(tmp_path, "n.npy", f))


def test_load_array_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no such image file: .*missing\.npy"):
        data.load_array(tmp_path / "missing.npy")
    (tmp_path / "x.png").write_bytes(b"")
    with pytest.raises(ValueError, match=r"unsupported extension '\.png'; expected \.npy or \.npz"):
        data.load_array(tmp_path / "x.png")
    np.savez(tmp_path / "two.npz", images=np.zeros((2, 2, 2)), other=np.zeros(3))
    with pytest.raises(ValueError, match=r"holds arrays \['images', 'other'\]; choose one with key="):
        data.load_array(tmp_path / "two.npz")
    with pytest.raises(ValueError, match=r"no array 'imgs'; it holds \['images', 'other'\]"):
        data.load_array(tmp_path / "two.npz", key="imgs")
    np.save(tmp_path / "o.npy", np.array([None, 1], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match=r"unsupported dtype object"):
        data.load_array(tmp_path / "o.npy")


@pytest.mark.parametrize("name", ["img.idx", "img.idx.gz"])
def test_idx_round_trip(tmp_path, name):
    imgs = np.random.RandomState(1).randint(0, 256, (6, 5, 4), np.uint8)
    labels = np.array([3, 1, 4, 1, 5, 9], np.uint8)
    data.save_idx(tmp_path / name, imgs)
    data.save_idx(tmp_path / ("lab-" + name), labels)
    if name.endswith(".gz"):
        gzip.decompress((tmp_path / name).read_bytes())  # really gzip
    raw = data.load_idx(tmp_path / name)
    assert raw.dtype == np.uint8
    np.testing.assert_array_equal(raw, imgs)
    out = data.load_idx_images(tmp_path / name)
    assert out.shape == (6, 5, 4, 1) and out.dtype == np.float32
    np.testing.assert_allclose(out[..., 0], imgs / 127.5 - 1, rtol=0, atol=1e-6)
    lab = data.load_idx_labels(tmp_path / ("lab-" + name))
    assert lab.dtype == np.int64
    np.testing.assert_array_equal(lab, labels)


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
def test_idx_dtypes(tmp_path, dtype):
    a = (np.arange(24).reshape(2, 3, 4) - 5).astype(dtype) if dtype != np.uint8 else np.arange(24, dtype=np.uint8)
    p = data.save_idx(tmp_path / "a.idx", a)
    code = {np.uint8: 0x08, np.int8: 0x09, np.int16: 0x0B, np.int32: 0x0C, np.float32: 0x0D, np.float64: 0x0E}[dtype]
    assert p.read_bytes()[:4] == bytes([0, 0, code, a.ndim])
    b = data.load_idx(p)
    assert b.dtype == np.dtype(dtype) and b.shape == a.shape
    np.testing.assert_array_equal(b, a)
    data.save_idx(p, a.astype(np.dtype(dtype).newbyteorder(">")))  # non-native byte order in, same file out
    np.testing.assert_array_equal(data.load_idx(p), a)


def test_idx_errors(tmp_path):
    p = data.save_idx(tmp_path / "t.idx", np.zeros((4, 3, 3), np.uint8))
    p.write_bytes(p.read_bytes()[:-2])
    with pytest.raises(ValueError, match=r"promises 36 data bytes for shape \(4, 3, 3\), file has 34"):
        data.load_idx(p)
    p.write_bytes(p.read_bytes()[:9])
    with pytest.raises(ValueError, match=r"truncated IDX header"):
        data.load_idx(p)
    g = data.save_idx(tmp_path / "t.idx.gz", np.zeros((4, 3, 3), np.uint8))
    g.write_bytes(g.read_bytes()[:-10])
    with pytest.raises(ValueError, match=r"corrupt or truncated gzip"):
        data.load_idx(g)
    (tmp_path / "bad.idx").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(ValueError, match=r"bad magic number 01020304"):
        data.load_idx(tmp_path / "bad.idx")
    (tmp_path / "code.idx").write_bytes(b"\x00\x00\x07\x01\x00\x00\x00\x01\x00")
    with pytest.raises(ValueError, match=r"bad magic number 00000701"):
        data.load_idx(tmp_path / "code.idx")
    with pytest.raises(FileNotFoundError, match=r"no such IDX file: .*nope\.idx"):
        data.load_idx(tmp_path / "nope.idx")
    data.save_idx(tmp_path / "l.idx", np.zeros((4, 3, 3), np.uint8))
    with pytest.raises(ValueError, match=r"expected 1-D integer labels, got shape \(4, 3, 3\)"):
        data.load_idx_labels(tmp_path / "l.idx")
    data.save_idx(tmp_path / "f.idx", np.zeros(4, np.float32))
    with pytest.raises(ValueError, match=r"expected 1-D integer labels.*float32"):
        data.load_idx_labels(tmp_path / "f.idx")
    with pytest.raises(ValueError, match=r"expected 3-D image data \[N, H, W\], got shape \(4,\)"):
        data.load_idx_images(tmp_path / "f.idx")
    with pytest.raises(ValueError, match=r"dtype int64 has no IDX type code"):
        data.save_idx(tmp_path / "i.idx", np.zeros(3, np.int64))


def test_data_mean():
    x = np.stack([np.full((2, 2, 1), v, np.float32) for v in (-1.0, 0.0, 0.5)])
    m = data.data_mean(x)
    assert m.shape == (2, 2, 1) and m.dtype == np.float32
    np.testing.assert_allclose(m, np.full((2, 2, 1), -1 / 6), rtol=1e-6)
    tr = data.load_digits("train")
    np.testing.assert_allclose(data.data_mean(tr), tr.astype(np.float64).mean(0), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match=r"needs images \[N, H, W, C\], got shape \(2, 2\)"):
        data.data_mean(np.zeros((2, 2)))
    with pytest.raises(ValueError, match=r"at least one image"):
        data.data_mean(np.zeros((0, 2, 2, 1)))
