"""Digits data sets (offline sources, IDX fixtures) and the Fréchet distance in a feature classifier's space."""
import gzip

import jax
import numpy as np
import pytest
import scipy.linalg

from mijax import data, features
from mijax.data import digits
from mijax.errors import MijaxError


def _fixture(tmp_path, gz: bool, dotted: bool = False):
    rng = np.random.default_rng(0)
    arrays = {"train_images": rng.integers(0, 256, (7, 28, 28), dtype=np.uint8),
              "train_labels": np.arange(7, dtype=np.uint8) % 10,
              "test_images": rng.integers(0, 256, (3, 28, 28), dtype=np.uint8),
              "test_labels": np.array([9, 0, 5], np.uint8)}
    for key, stem in digits.MNIST_FILES.items():
        name = stem.replace("-idx", ".idx") if dotted else stem
        digits.write_idx(tmp_path / (name + (".gz" if gz else "")), arrays[key])
    return arrays


@pytest.mark.parametrize("gz,dotted", [(False, False), (True, False), (True, True)])
def test_mnist_from_idx_files(tmp_path, gz, dotted):
    arrays = _fixture(tmp_path, gz, dotted)
    d = digits.load_mnist(tmp_path)
    np.testing.assert_array_equal(d.train_images, arrays["train_images"])
    np.testing.assert_array_equal(d.test_labels, arrays["test_labels"])
    ds = data.make("mnist", {"path": str(tmp_path)})
    assert ds.shape == (32, 32, 1)
    x = np.asarray(ds.training_set(jax.random.key(0), 5))
    assert x.shape == (5, 32, 32, 1) and x.dtype == np.float32 and x.min() >= -1 and x.max() <= 1
    assert np.all(x[:, :2] == -1) and np.all(x[:, :, -2:] == -1)  # zero-padded by 2: background
    padded = ds.digits().train_images
    np.testing.assert_array_equal(padded[:, 2:30, 2:30], arrays["train_images"])
    assert data.make("mnist", {"path": str(tmp_path), "size": 28}).digits().train_images.shape == (7, 28, 28)
    np.testing.assert_array_equal(np.asarray(ds.reference(jax.random.key(1), 10)).shape, (3, 32, 32, 1))


def test_mnist_from_npz_and_bad_sources(tmp_path):
    arrays = _fixture(tmp_path, gz=False)
    np.savez(tmp_path / "mnist.npz", x_train=arrays["train_images"], y_train=arrays["train_labels"],
             x_test=arrays["test_images"], y_test=arrays["test_labels"])
    d = digits.load_mnist(tmp_path / "mnist.npz")
    np.testing.assert_array_equal(d.train_labels, arrays["train_labels"])
    with pytest.raises(MijaxError, match="--mnist-dir"):
        data.make("mnist")
    with pytest.raises(MijaxError, match="no MNIST files"):
        data.make("mnist", {"path": str(tmp_path / "nowhere")})
    np.savez(tmp_path / "partial.npz", x_train=arrays["train_images"])
    with pytest.raises(digits.SourceError, match="lacks y_train"):
        digits.load_mnist(tmp_path / "partial.npz")
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(b"\x00\x00\x09\x01garbage")  # float magic, not bytes
    with pytest.raises(digits.SourceError, match="not an IDX file"):
        digits.load_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x05\x01")  # 5 said, 1 held
    with pytest.raises(digits.SourceError, match="holds 1"):
        digits.load_mnist(tmp_path)
    digits.write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(2, np.uint8))  # 3 images, 2 labels
    with pytest.raises(digits.SourceError, match="3 images but 2 labels"):
        digits.load_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(digits.SourceError, match="no t10k-labels-idx1-ubyte"):
        digits.load_mnist(tmp_path)
    (tmp_path / "broken.gz").write_bytes(gzip.compress(b"x")[:5])
    with pytest.raises(digits.SourceError, match="cannot read"):
        digits.read_idx(tmp_path / "broken.gz")


def test_shipped_digits_split_by_class():
    ds = data.make("digits8")
    d = ds.digits()
    assert ds.shape == (8, 8, 1) and len(d.train_images) + len(d.test_images) == 1_797
    assert data.entry("digits8").n_train == len(d.train_images)
    assert set(np.unique(d.train_images)) <= {int(round(255 * v / 16)) for v in range(17)}
    assert np.all(np.abs(np.bincount(d.test_labels) / np.bincount(d.train_labels) - 0.25) < 0.02)
    m = data.make("mnist5k").digits()
    assert m.train_images.shape == (4_000, 32, 32) and m.test_images.shape == (1_000, 32, 32)
    assert data.entry("mnist5k").n_train == 4_000
    assert np.all(m.train_images[:, :2] == 0) and np.all(m.train_images[:, :, 30:] == 0)
    assert np.all(np.bincount(m.test_labels, minlength=10) >= 80)
    other = data.make("mnist5k", {"split_seed": 1}).digits()
    assert not np.array_equal(other.test_labels, m.test_labels) or not np.array_equal(other.test_images, m.test_images)
    with pytest.raises(MijaxError, match="size must be 8"):
        data.make("digits8", {"size": 32})
    with pytest.raises(MijaxError, match="holdout"):
        data.make("mnist5k", {"holdout": 1.0})


def test_frechet_distance_closed_forms():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=4), rng.normal(size=4)
    a, b = rng.uniform(0.1, 2, 4), rng.uniform(0.1, 2, 4)
    # diagonal covariances: |mu1 - mu2|^2 + sum (sqrt(a) - sqrt(b))^2
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert features.frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-12)
    # full covariances: the textbook formula with scipy's matrix square root
    m1, m2 = rng.normal(size=(4, 4)), rng.normal(size=(4, 4))
    c1, c2 = m1 @ m1.T + 0.1 * np.eye(4), m2 @ m2.T + 0.1 * np.eye(4)
    textbook = np.sum((mu1 - mu2) ** 2) + np.trace(c1 + c2 - 2 * scipy.linalg.sqrtm(c1 @ c2).real)
    assert features.frechet_distance(mu1, c1, mu2, c2) == pytest.approx(textbook, rel=1e-9)
    assert features.frechet_distance(mu1, c1, mu1, c1) == pytest.approx(0.0, abs=1e-10)
    # sample fits: a set against itself is 0; an independent draw of the same law is near 0 (far below a shift)
    x, y = rng.normal(size=(4_000, 3)), rng.normal(size=(4_000, 3))
    assert features.frechet_between(x, x) == pytest.approx(0.0, abs=1e-10)
    assert features.frechet_between(x, y) < 0.01
    assert features.frechet_between(x, x + 0.5) == pytest.approx(3 * 0.25, rel=1e-9)  # a shift: |0.5 * 1|^2
    with pytest.raises(ValueError, match="N >= 2"):
        features.gaussian_fit(np.zeros((1, 3)))


@pytest.fixture(scope="module")
def small_classifier(tmp_path_factory):
    """The digits8 classifier with a short recipe, through the on-disk cache."""
    import os

    cache = tmp_path_factory.mktemp("cache")
    old = os.environ.get("MIJAX_CACHE")
    os.environ["MIJAX_CACHE"] = str(cache)
    recipe = features.Recipe(steps=150, channels=8, features=32, shift=1, learning_rate=3e-3)
    try:
        ds = data.make("digits8")
        clf = features.classifier_for(ds, recipe)
        features._LOADED.clear()
        again = features.classifier_for(ds, recipe)  # read back from the cache, not retrained
        yield ds, clf, again, cache
    finally:
        if old is None:
            os.environ.pop("MIJAX_CACHE", None)
        else:
            os.environ["MIJAX_CACHE"] = old
        features._LOADED.clear()


def test_the_feature_classifier(small_classifier, monkeypatch):
    """One test (its classifier is trained once): the cache, the Fréchet distance in its features, measure."""
    _cache_and_accuracy(*small_classifier)
    _frechet_grows_with_noise_and_blur(*small_classifier)
    _digits_measure(*small_classifier, monkeypatch)


def _cache_and_accuracy(ds, clf, again, cache):
    assert len(list((cache / "classifiers").glob("digits8-8-*.msgpack"))) == 1
    assert again.accuracy == clf.accuracy > 0.8  # a short recipe still names most held-out digits
    x = np.asarray(ds.reference(jax.random.key(0), 50))
    np.testing.assert_array_equal(again.features(x), clf.features(x))
    p = clf.probabilities(x)
    assert p.shape == (50, 10) and np.allclose(p.sum(axis=1), 1.0)
    assert clf.features(x[:0]).shape == (0, 32)
    with pytest.raises(ValueError, match=r"\[N, H, W, 1\]"):
        clf.features(x[..., 0])


def _frechet_grows_with_noise_and_blur(ds, clf, again, cache):
    reference = np.asarray(ds.reference(jax.random.key(0), 400))
    train = np.asarray(ds.training_set(jax.random.key(1), 800))
    noise = np.random.default_rng(0).normal(size=train.shape).astype(np.float32)
    by_noise = [clf.frechet(np.clip(train + s * noise, -1, 1), reference) for s in (0.0, 0.2, 0.5, 1.0)]
    assert all(a < b for a, b in zip(by_noise, by_noise[1:])), by_noise

    def blur(x, s):
        from scipy import ndimage

        return ndimage.gaussian_filter(x, sigma=(0, s, s, 0), mode="constant", cval=-1.0) if s else x

    by_blur = [clf.frechet(blur(train, s), reference) for s in (0.0, 0.6, 1.0, 1.6)]
    assert all(a < b for a, b in zip(by_blur, by_blur[1:])), by_blur
    assert clf.frechet(reference, reference) == pytest.approx(0.0, abs=1e-6)


def _digits_measure(ds, clf, again, cache, monkeypatch):
    monkeypatch.setattr(type(ds), "classifier", lambda self, progress=False: clf)
    real = np.asarray(ds.training_set(jax.random.key(2), 300))
    reference = np.asarray(ds.reference(jax.random.key(3), 300))
    m = ds.measure(real, reference)
    assert set(ds.summary_keys) <= set(m) and len(m["class_histogram"]) == 10
    assert m["classes_present"] == 10 and sum(m["class_histogram"]) == pytest.approx(1.0)
    blank = -np.ones_like(real)
    mb = ds.measure(blank, reference)
    assert mb["classes_present"] == 1 and mb["frechet"] > m["frechet"]
    assert ds.labels(real)["unconfident"].dtype == bool
