"""Each plot function returns its figure and, given a path, writes it as a non-empty PNG, atomically, without
leaking pyplot figures."""
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
    assert isinstance(returned, matplotlib.figure.Figure)
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
    _assert_png(path, plots.plot_histogram_1d(x, mixture, hl.labels(mixture, x), bins=120, title="1D", path=path))
    # Overwriting works, and explicit labels are accepted.
    positives = np.zeros(x.shape[0], bool)
    _assert_png(path, plots.plot_histogram_1d(x, mixture, positives=positives, path=path))
    assert _no_pyplot_figures()


def test_histogram_1d_rejects_2d(tmp_path):
    with pytest.raises(ValueError, match=r"\[N, 1\]"):
        plots.plot_histogram_1d(jnp.zeros((3, 2)), mixtures.gaussian25(), np.zeros(3, bool), path=tmp_path / "bad.png")
    assert os.listdir(tmp_path) == []


def test_hal_histograms(tmp_path, samples_1d):
    mixture, x = samples_1d
    positives = np.asarray(hl.labels(mixture, x))
    hal = np.where(positives, 1e-3, 1e-6) * np.exp(np.random.default_rng(0).normal(size=positives.size))
    hal[0] = 0.0  # clipped into the first log bin, not dropped
    threshold = detection.retained_at_removal(hal, positives)["threshold"]
    path = tmp_path / "sub" / "hal.png"  # the directory is created
    _assert_png(path, plots.plot_hal_histograms(hal, positives, threshold=threshold, path=path))
    _assert_png(path, plots.plot_hal_histograms(np.ones(4), np.zeros(4, bool), path=path))  # one class, equal values
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
    _assert_png(path, plots.plot_roc(curves, path=path))


def test_scatter_2d(tmp_path):
    mixture = mixtures.gaussian25()
    key = jax.random.key(2)
    x = jnp.concatenate([mixtures.sample(mixture, key, 2500),
                         jax.random.uniform(key, (100, 2), minval=-0.7, maxval=0.7)])
    path = tmp_path / "grid.png"
    _assert_png(path, plots.plot_scatter_2d(x, mixture, hl.labels(mixture, x), max_points=1000, path=path))
    positives = np.asarray(hl.labels(mixture, x))
    _assert_png(path, plots.plot_scatter_2d(x, mixture, positives=positives, path=str(path)))
    assert _no_pyplot_figures()


def test_failed_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "roc.png"
    plots.plot_roc({"chance": ([0.0, 1.0], [0.0, 1.0], 0.5)}, path=path)
    before = path.read_bytes()

    def fail(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", fail)
    with pytest.raises(RuntimeError, match="disk full"):
        plots.plot_roc({"other": ([0.0, 0.5, 1.0], [0.0, 0.9, 1.0], 0.7)}, path=path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["roc.png"]


def test_ci_bands_cut_to_the_possible_range_with_each_seed_as_a_dot(tmp_path):
    wide = [{"mean": 0.2, "low": -0.5, "high": 0.9}, {"mean": 0.3, "low": -0.1, "high": 1.4}]
    path = tmp_path / "shares.png"
    returned = plots.plot_ci_bands([0, 1], {"a": wide, "b": wide}, "generation", "%", "t", scale=100.0,
                                   integer_x=True, bounds=(0.0, 1.0), points={"a": [[0.1, 0.3], [0.2, 0.4]]}, path=path)
    _assert_png(path, returned)
    ax = returned.axes[0]
    bands = [c for c in ax.collections if type(c).__name__ in ("PolyCollection", "FillBetweenPolyCollection")]
    ys = np.concatenate([p.vertices[:, 1] for c in bands for p in c.get_paths()])
    assert len(bands) == 2 and ys.min() == 0.0 and ys.max() == 100.0  # cut to 0% .. 100%
    dots = [c for c in ax.collections if type(c).__name__ == "PathCollection"]
    assert sorted(float(y) for c in dots for y in c.get_offsets()[:, 1]) == [10.0, 20.0, 30.0, 40.0]
    assert _no_pyplot_figures()


def test_image_grid_draws_labelled_sections_and_refuses_other_shapes(tmp_path):
    images = np.linspace(-1.0, 1.0, 5 * 8 * 8).reshape(5, 8, 8, 1)
    path = tmp_path / "grid.png"
    _assert_png(path, plots.plot_image_grid({"real": images, "generated": images[:3], "empty": images[:0]},
                                            columns=4, title="grid", path=path))
    with pytest.raises(ValueError, match="grey images"):
        plots.plot_image_grid({"rgb": np.zeros((2, 8, 8, 3))}, path=tmp_path / "bad.png")


def test_loss_curve_of_a_few_models(tmp_path):
    steps = np.arange(1, 201)
    losses = np.stack([1.0 / steps, 2.0 / steps], axis=1)
    path = tmp_path / "loss.png"
    _assert_png(path, plots.plot_losses(steps, losses, ["seed_0", "seed_1"], path=path))
    with pytest.raises(ValueError, match="losses"):
        plots.plot_losses(steps, losses[:10], path=tmp_path / "bad.png")


def test_a_figure_is_returned_and_written_only_when_given_a_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    curves = {"Hal": ([0.0, 0.2, 1.0], [0.0, 0.8, 1.0], 0.8)}
    figure = plots.plot_roc(curves, title="kept")
    assert isinstance(figure, matplotlib.figure.Figure) and figure.axes[0].get_title() == "kept"
    assert os.listdir(tmp_path) == []  # nothing written
    figure.axes[0].set_title("changed")  # still usable: change it, then write it
    elsewhere = tmp_path / "elsewhere.png"
    assert plots.save(figure, elsewhere) == str(elsewhere) and elsewhere.read_bytes()[:8] == PNG_MAGIC
    path = tmp_path / "roc.png"
    written = plots.plot_roc(curves, path=path)
    assert isinstance(written, matplotlib.figure.Figure) and path.read_bytes()[:8] == PNG_MAGIC
    assert written.axes[0].get_title() == "Detecting hallucinations"  # the written figure is returned, usable
    assert sorted(os.listdir(tmp_path)) == ["elsewhere.png", "roc.png"]
    assert _no_pyplot_figures()


@pytest.mark.parametrize("path", ["old.png", Path("old.png")])
def test_a_path_where_the_data_belongs_is_refused(tmp_path, monkeypatch, path):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(TypeError, match=r"data first .* path="):
        plots.plot_roc(path, {"Hal": ([0.0, 1.0], [0.0, 1.0], 0.5)})
    assert os.listdir(tmp_path) == []
