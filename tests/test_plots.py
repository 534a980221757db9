"""Each figure is written as a non-empty PNG, atomically, without leaking pyplot figures."""
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import matplotlib.figure
import numpy as np
import pytest

from mijax import detection
from mijax.data import mixtures as hl
from mijax import mixtures, plots

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _assert_png(path, returned):
    assert returned == str(path)
    with open(path, "rb") as f:
        head = f.read(8)
    assert head == PNG_MAGIC and os.path.getsize(path) > 1000
    assert os.listdir(os.path.dirname(path)) == [os.path.basename(path)]  # no temporary file left


def _no_pyplot_figures():
    import matplotlib.pyplot as plt

    return plt.get_fignums() == []


@pytest.fixture(scope="module")
def samples_1d():
    mixture = mixtures.gaussian1d()
    x = mixtures.sample(mixture, jax.random.key(0), 3000)
    x = jnp.concatenate([x, jnp.linspace(1.3, 2.7, 40)[:, None]])
    return mixture, x


def test_histogram_1d(tmp_path, samples_1d):
    mixture, x = samples_1d
    path = tmp_path / "figure2.png"
    _assert_png(path, plots.plot_histogram_1d(path, x, mixture, hl.labels(mixture, x), bins=120, title="1D"))
    # Overwriting works, and explicit labels are accepted.
    positives = np.zeros(x.shape[0], bool)
    _assert_png(path, plots.plot_histogram_1d(path, x, mixture, positives=positives))
    assert _no_pyplot_figures()


def test_histogram_1d_rejects_2d(tmp_path):
    with pytest.raises(ValueError, match=r"\[N, 1\]"):
        plots.plot_histogram_1d(tmp_path / "bad.png", jnp.zeros((3, 2)), mixtures.gaussian25(), np.zeros(3, bool))
    assert os.listdir(tmp_path) == []


def test_hal_histograms(tmp_path, samples_1d):
    mixture, x = samples_1d
    positives = np.asarray(hl.labels(mixture, x))
    hal = np.where(positives, 1e-3, 1e-6) * np.exp(np.random.default_rng(0).normal(size=positives.size))
    hal[0] = 0.0  # clipped into the first log bin, not dropped
    threshold = detection.retained_at_removal(hal, positives)["threshold"]
    path = tmp_path / "sub" / "hal.png"  # the directory is created
    _assert_png(path, plots.plot_hal_histograms(path, hal, positives, threshold=threshold))
    _assert_png(path, plots.plot_hal_histograms(path, np.ones(4), np.zeros(4, bool)))  # one class, equal values
    assert _no_pyplot_figures()


def test_roc(tmp_path):
    rng = np.random.default_rng(1)
    positives = rng.random(500) < 0.2
    curves = {}
    for name, separation in (("Hal", 3.0), ("weak", 0.5)):
        scores = rng.normal(size=500) + separation * positives
        fpr, tpr, _ = detection.roc_curve(scores, positives)
        curves[name] = (fpr, tpr, detection.auroc(scores, positives))
    path = tmp_path / "roc.png"
    _assert_png(path, plots.plot_roc(path, curves))


def test_scatter_2d(tmp_path):
    mixture = mixtures.gaussian25()
    key = jax.random.key(2)
    x = jnp.concatenate([mixtures.sample(mixture, key, 2500),
                         jax.random.uniform(key, (100, 2), minval=-0.7, maxval=0.7)])
    path = tmp_path / "grid.png"
    _assert_png(path, plots.plot_scatter_2d(path, x, mixture, hl.labels(mixture, x), max_points=1000))
    positives = np.asarray(hl.labels(mixture, x))
    _assert_png(path, plots.plot_scatter_2d(str(path), x, mixture, positives=positives))
    assert _no_pyplot_figures()


def test_failed_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "roc.png"
    plots.plot_roc(path, {"chance": ([0.0, 1.0], [0.0, 1.0], 0.5)})
    before = path.read_bytes()

    def fail(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", fail)
    with pytest.raises(RuntimeError, match="disk full"):
        plots.plot_roc(path, {"other": ([0.0, 0.5, 1.0], [0.0, 0.9, 1.0], 0.7)})
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["roc.png"]


def test_ci_bands_cut_to_the_possible_range_with_each_seed_as_a_dot(tmp_path, monkeypatch):
    drawn = {}
    save = plots.save
    monkeypatch.setattr(plots, "save", lambda figure, path: drawn.setdefault("figure", figure) and save(figure, path))
    wide = [{"mean": 0.2, "low": -0.5, "high": 0.9}, {"mean": 0.3, "low": -0.1, "high": 1.4}]
    path = tmp_path / "shares.png"
    returned = plots.plot_ci_bands(path, [0, 1], {"a": wide, "b": wide}, "generation", "%", "t", scale=100.0,
                                   integer_x=True, bounds=(0.0, 1.0), points={"a": [[0.1, 0.3], [0.2, 0.4]]})
    _assert_png(path, returned)
    ax = drawn["figure"].axes[0]
    bands = [c for c in ax.collections if type(c).__name__ in ("PolyCollection", "FillBetweenPolyCollection")]
    ys = np.concatenate([p.vertices[:, 1] for c in bands for p in c.get_paths()])
    assert len(bands) == 2 and ys.min() == 0.0 and ys.max() == 100.0  # cut to 0% .. 100%
    dots = [c for c in ax.collections if type(c).__name__ == "PathCollection"]
    assert sorted(float(y) for c in dots for y in c.get_offsets()[:, 1]) == [10.0, 20.0, 30.0, 40.0]
    assert _no_pyplot_figures()


def test_image_grid_draws_labelled_sections_and_refuses_other_shapes(tmp_path):
    images = np.linspace(-1.0, 1.0, 5 * 8 * 8).reshape(5, 8, 8, 1)
    path = plots.plot_image_grid(tmp_path / "grid.png", {"real": images, "generated": images[:3], "empty": images[:0]},
                                 columns=4, title="grid")
    assert Path(path).stat().st_size > 1000
    with pytest.raises(ValueError, match="grey images"):
        plots.plot_image_grid(tmp_path / "bad.png", {"rgb": np.zeros((2, 8, 8, 3))})


def test_loss_curve_of_a_few_models(tmp_path):
    steps = np.arange(1, 201)
    losses = np.stack([1.0 / steps, 2.0 / steps], axis=1)
    assert Path(plots.plot_losses(tmp_path / "loss.png", steps, losses, ["seed_0", "seed_1"])).stat().st_size > 1000
    with pytest.raises(ValueError, match="losses"):
        plots.plot_losses(tmp_path / "bad.png", steps, losses[:10])
