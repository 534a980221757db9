"""Feature networks and the Fréchet distance: how far a set of generated images is from real ones.

No Inception weights can be downloaded, so (as model-collapse work on MNIST does with a LeNet) the
distance is taken in the penultimate features of a small CNN classifier trained in-project on the real
digits (:class:`DigitNet`, trained by :func:`train_classifier`, one per data set, cached on disk by
:func:`classifier_for`). The Fréchet distance between Gaussian fits ``N(mu1, C1)`` and ``N(mu2, C2)`` is

    ||mu1 - mu2||^2 + tr C1 + tr C2 - 2 tr (C1^(1/2) C2 C1^(1/2))^(1/2)

(the formula of FID, Heusel et al. 2017), computed in float64 from symmetric eigendecompositions, so it is
exactly 0 for a set against itself up to rounding. Its scale is the classifier's, not Inception's: compare
distances of one data set's classifier only.

The classifier also names samples: its class histogram (collapse drops classes) and its top
probability (a digit it cannot name is an image-level hallucination signal).

Cache: ``$MIJAX_CACHE`` (default ``~/.cache/mijax``) ``/classifiers/<data set>-<size>-<digits hash>-<recipe
hash>.msgpack`` with a JSON beside it (recipe, held-out accuracy); written atomically, read back when the
same digits and recipe ask again.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from mijax import execution, store
from mijax.data.images import to_model
from mijax.execution import compile_init


# ---------------------------------------------------------------------------------------------
# The Fréchet distance.

def gaussian_fit(features) -> tuple[np.ndarray, np.ndarray]:
    """Mean [F] and covariance [F, F] (unbiased, float64) of ``features`` [N, F], N >= 2."""
    f = np.asarray(features, np.float64)
    if f.ndim != 2 or len(f) < 2:
        raise ValueError(f"a Gaussian fit needs features [N >= 2, F], got {f.shape}")
    return f.mean(axis=0), np.cov(f, rowvar=False).reshape(f.shape[1], f.shape[1])


def _sqrt_psd(c: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((c + c.T) / 2)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(mu1, cov1, mu2, cov2) -> float:
    """The Fréchet (2-Wasserstein squared) distance between N(mu1, cov1) and N(mu2, cov2) (see the module
    docstring); mu [F], cov [F, F], any symmetric positive semi-definite covariances."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    cov1, cov2 = np.asarray(cov1, np.float64), np.asarray(cov2, np.float64)
    if mu1.shape != mu2.shape or cov1.shape != cov2.shape or cov1.shape != mu1.shape * 2:
        raise ValueError(f"mismatched Gaussians: means {mu1.shape}, {mu2.shape}; covariances {cov1.shape}, "
                         f"{cov2.shape}")
    s1 = _sqrt_psd(cov1)
    middle = s1 @ cov2 @ s1
    cross = np.sum(np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0.0, None)))
    d = float(np.sum((mu1 - mu2) ** 2) + np.trace(cov1) + np.trace(cov2) - 2.0 * cross)
    return max(d, 0.0)


def frechet_between(features1, features2) -> float:
    """The Fréchet distance between Gaussian fits of two feature sets [N1, F] and [N2, F]."""
    return frechet_distance(*gaussian_fit(features1), *gaussian_fit(features2))


# ---------------------------------------------------------------------------------------------
# The classifier.

class DigitNet(nn.Module):
    """A small CNN for grey digits [N, H, W, 1] (H = W in 8..32): 3 x 3 convolutions of ``channels``,
    2 ``channels``, ... each followed by 2 x 2 average pooling until the map is 4 x 4 or smaller, one more
    convolution, then a dense layer of ``features`` units (the Fréchet features) and the class logits.
    Returns ``(logits [N, classes], features [N, features])``."""

    num_classes: int = 10
    channels: int = 16
    features: int = 128

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
        c = self.channels
        while x.shape[1] > 4:
            x = nn.avg_pool(nn.relu(nn.Conv(c, (3, 3))(x)), (2, 2), strides=(2, 2))
            c *= 2
        x = nn.relu(nn.Conv(c, (3, 3))(x))
        features = nn.relu(nn.Dense(self.features)(x.reshape(x.shape[0], -1)))
        return nn.Dense(self.num_classes)(features), features


@dataclasses.dataclass(frozen=True)
class Recipe:
    """How the classifier trains (Adam, a cosine-decayed rate, random shifts of up to ``shift`` pixels)."""

    steps: int = 1_500
    batch_size: int = 128
    learning_rate: float = 2e-3
    weight_decay: float = 1e-4
    shift: int = 2
    channels: int = 16
    features: int = 128
    seed: int = 0

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(dataclasses.asdict(self), sort_keys=True).encode()).hexdigest()[:10]


def _shift(key: jax.Array, x: jnp.ndarray, shift: int) -> jnp.ndarray:
    """Each image [N, H, W, 1] moved by its own random offset in -shift..shift (zero-filled: background -1)."""
    if shift == 0:
        return x
    n, h, w, _ = x.shape
    padded = jnp.pad(x, ((0, 0), (shift, shift), (shift, shift), (0, 0)), constant_values=-1.0)
    offsets = jax.random.randint(key, (n, 2), 0, 2 * shift + 1)
    return jax.vmap(lambda img, o: jax.lax.dynamic_slice(img, (o[0], o[1], 0), (h, w, 1)))(padded, offsets)


@dataclasses.dataclass
class Classifier:
    """A trained :class:`DigitNet` with its held-out accuracy; every method takes model images
    [N, H, W, 1] in [-1, 1] (any N, run in batches) and returns numpy arrays."""

    module: DigitNet
    params: Any
    accuracy: float
    info: dict

    @functools.cached_property
    def _apply(self):
        return jax.jit(lambda p, x: self.module.apply(p, x))

    def _outputs(self, x, batch: int = 1_000) -> tuple[np.ndarray, np.ndarray]:
        x = np.asarray(x, np.float32)
        if x.ndim != 4 or x.shape[-1] != 1:
            raise ValueError(f"the classifier takes images [N, H, W, 1], got {x.shape}")
        logits, feats = [], []
        for start in range(0, len(x), batch):
            part = x[start:start + batch]
            size = len(part)
            if size < batch and len(x) > batch:  # one compiled shape for every full and ragged batch
                part = np.concatenate([part, np.zeros((batch - size,) + part.shape[1:], np.float32)])
            lo, fe = self._apply(self.params, jnp.asarray(part))
            logits.append(np.asarray(lo)[:size])
            feats.append(np.asarray(fe)[:size])
        if not logits:
            return np.zeros((0, self.module.num_classes), np.float32), np.zeros((0, self.module.features), np.float32)
        return np.concatenate(logits), np.concatenate(feats)

    def features(self, x) -> np.ndarray:
        """Penultimate features [N, F]."""
        return self._outputs(x)[1]

    def judge(self, x) -> tuple[np.ndarray, np.ndarray]:
        """Class probabilities [N, classes] (softmax of the logits, float64) and features [N, F], one pass."""
        logits, feats = self._outputs(x)
        logits = logits.astype(np.float64)
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        return p / p.sum(axis=1, keepdims=True), feats

    def probabilities(self, x) -> np.ndarray:
        """Class probabilities [N, classes] (softmax of the logits, float64)."""
        return self.judge(x)[0]

    def predict(self, x) -> np.ndarray:
        """The top class [N]."""
        return self._outputs(x)[0].argmax(axis=1)

    def confidence(self, x) -> np.ndarray:
        """The top class probability [N] (low: a digit the classifier cannot name)."""
        return self.probabilities(x).max(axis=1)

    def frechet(self, x, reference) -> float:
        """Fréchet distance between Gaussian fits of the features of x [N, ...] and reference [M, ...]."""
        return frechet_between(self.features(x), self.features(reference))


def train_classifier(images, labels, recipe: Recipe = Recipe(), test_images=None, test_labels=None,
                     progress: bool = False, desc: str = "classifier") -> Classifier:
    """Train a :class:`DigitNet` on model images [M, H, W, 1] in [-1, 1] with int labels [M]; its accuracy
    on (test_images, test_labels) is measured when given (else NaN)."""
    x = jnp.asarray(images, jnp.float32)
    y = jnp.asarray(labels, jnp.int32)
    if x.ndim != 4 or x.shape[-1] != 1 or y.shape != x.shape[:1]:
        raise ValueError(f"train_classifier takes images [M, H, W, 1] and labels [M], got {x.shape}, {y.shape}")
    module = DigitNet(num_classes=10, channels=recipe.channels, features=recipe.features)
    key = jax.random.key(recipe.seed)
    init_key = jax.random.fold_in(key, 0)
    params = compile_init(module.init, init_key, x[:1])(init_key, x[:1])
    schedule = optax.cosine_decay_schedule(recipe.learning_rate, recipe.steps)
    optimiser = optax.adamw(schedule, weight_decay=recipe.weight_decay)
    opt_state = optimiser.init(params)
    batch = min(recipe.batch_size, len(x))

    @jax.jit
    def step(params, opt_state, i):
        k = jax.random.fold_in(key, i + 1)
        idx = jax.random.randint(jax.random.fold_in(k, 0), (batch,), 0, len(x))
        xb = _shift(jax.random.fold_in(k, 1), x[idx], recipe.shift)

        def loss_fn(p):
            logits, _ = module.apply(p, xb)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y[idx]).mean()

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = optimiser.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    start = time.perf_counter()
    bar = execution.progress_bar(progress, total=recipe.steps, desc=desc, unit="step")
    try:
        for i in range(recipe.steps):  # a host loop: XLA:CPU runs convolution gradients slowly inside scans
            params, opt_state, loss = step(params, opt_state, jnp.int32(i))
            bar.update(1)
    finally:
        bar.close()
    clf = Classifier(module, params, float("nan"), {"recipe": dataclasses.asdict(recipe),
                                                    "train_seconds": time.perf_counter() - start,
                                                    "final_loss": float(loss)})
    if test_images is not None:
        predicted = clf.predict(test_images)
        clf.accuracy = float(np.mean(predicted == np.asarray(test_labels)))
        clf.info["test_count"] = int(len(predicted))
    clf.info["accuracy"] = clf.accuracy
    return clf


def cache_dir() -> Path:
    """Where trained classifiers are kept: ``$MIJAX_CACHE`` or ``~/.cache/mijax``."""
    return Path(os.environ.get("MIJAX_CACHE") or Path.home() / ".cache" / "mijax")


_LOADED: dict[str, Classifier] = {}


def classifier_for(dataset, recipe: Optional[Recipe] = None, progress: bool = False) -> Classifier:
    """The feature classifier of a digits data set (:class:`mijax.data.digits.DigitsDataset`: its ``name``,
    ``size``, ``shape`` and uint8 splits ``digits()``): trained on its training split, tested on its held-out
    split, cached in memory and on disk (see the module docstring)."""
    from flax import serialization

    recipe = recipe or default_recipe(dataset.size)
    d = dataset.digits()
    name = f"{dataset.name}-{dataset.size}-{d.fingerprint()}-{recipe.digest()}"
    if name in _LOADED:
        return _LOADED[name]
    path = cache_dir() / "classifiers" / f"{name}.msgpack"
    module = DigitNet(num_classes=10, channels=recipe.channels, features=recipe.features)
    clf = None
    if path.is_file() and path.with_suffix(".json").is_file():
        try:
            template = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1,) + dataset.shape, jnp.float32))
            params = serialization.from_bytes(template, path.read_bytes())
            info = store.read_json(path.with_suffix(".json"))
            clf = Classifier(module, params, float(info["accuracy"]), info)
        except (ValueError, KeyError, OSError):  # a damaged cache entry: train again and replace it
            clf = None
    if clf is None:
        clf = train_classifier(to_model(d.train_images), d.train_labels, recipe,
                               to_model(d.test_images), d.test_labels, progress=progress,
                               desc=f"classifier of {dataset.name}")
        store.write_bytes(path, serialization.to_bytes(clf.params))
        store.write_json(path.with_suffix(".json"), {**clf.info, "data_set": dataset.name, "size": dataset.size})
    _LOADED[name] = clf
    return clf


def default_recipe(size: int) -> Recipe:
    """The classifier recipe per image size (8 x 8 digits: fewer features, shifts of one pixel). Held-out
    accuracy: digits8 98.3% (1,000 steps, 7 s), mnist5k 98.7% (1,500 steps)."""
    return Recipe(steps=1_000, features=64, shift=1) if size <= 8 else Recipe()


__all__: Sequence[str] = ("Classifier", "DigitNet", "Recipe", "cache_dir", "classifier_for", "default_recipe",
                          "frechet_between", "frechet_distance", "gaussian_fit", "train_classifier")
