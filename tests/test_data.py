"""Data sets as one concept: the registry, the mixture data sets, a toy image data set registered from outside
the library (trained, sampled with Hal and studied recursively through the public API), and run directories
written by mijax 0.1 (before the data-set redesign)."""
import dataclasses
import json
import math
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mijax
from mijax import data, store
from mijax.cli import main

LEGACY = Path(__file__).parent / "data" / "run-v0.1"


# ---------------------------------------------------------------------------------------------
# A toy image data set, defined here as a user would: two fixed 4 x 4 patterns plus noise.

PATTERNS = np.stack([np.where(np.arange(16).reshape(4, 4) < 8, 1.0, -1.0),  # top half bright
                     np.where(np.arange(16).reshape(4, 4) % 4 < 2, 1.0, -1.0)])[..., None]  # left half bright


@dataclasses.dataclass(frozen=True)
class Patterns:
    noise: float = 0.1
    name: str = "patterns4x4"
    shape: tuple = (4, 4, 1)
    summary_keys: tuple = ("off_pattern",)

    def training_set(self, key, n):
        base = jnp.asarray(PATTERNS, jnp.float32)[jnp.arange(n) % 2]
        return base + self.noise * jax.random.normal(key, (n, 4, 4, 1))

    def reference(self, key, n):
        return self.training_set(key, n)

    def hallucinated(self, x):
        diff = (np.asarray(x)[:, None] - PATTERNS[None]).reshape(len(x), 2, -1)
        distance = np.min(np.sqrt(np.sum(diff**2, axis=-1)), axis=1)
        return distance > 5 * self.noise * 4  # 5 noise stds of a 16-pixel image

    def labels(self, x):
        return {"off_pattern": self.hallucinated(x)}

    def measure(self, x, reference):
        return {"off_pattern": float(np.mean(self.hallucinated(x))), "mean": float(np.mean(x))}


mijax.data.register("patterns4x4", Patterns, n_train=64, summary="two 4 x 4 patterns plus noise", noise=0.1)


def test_a_registered_image_data_set_trains_samples_and_recurses(tmp_path):
    config = mijax.RunConfig(data=mijax.DataConfig("patterns4x4", n_train=64),
                             diffusion=mijax.DiffusionConfig(timesteps=20),
                             train=mijax.TrainConfig(steps=4, batch_size=32, steps_per_call=2), seeds=2, checkpoint_every=2)
    assert config.data.options == {"noise": 0.1}
    mijax.train_run(tmp_path / "run", config, progress=False)
    samples = mijax.sample_run(tmp_path / "run", 48, chunk_size=32)
    assert samples["x"].shape == (2, 48, 4, 4, 1) and samples["hal"].shape == (2, 48)
    assert np.all(np.isfinite(samples["x"])) and np.all(samples["hal"] > 0)
    # the same samples whatever the chunking, as for points
    whole = mijax.sample_run(tmp_path / "run", 48)
    np.testing.assert_array_equal(whole["x"], samples["x"])
    # `mijax sample --figures`: the samples as a labelled image grid beside the data set's own images
    assert main(["sample", "--run", str(tmp_path / "run"), "--n", "16", "--no-progress", "--out",
                 str(tmp_path / "s.npz"), "--figures", str(tmp_path / "figures")]) == 0
    assert (tmp_path / "figures" / "samples.png").stat().st_size > 1000

    # one filter: generation 1 has as many models as generation 0 and reuses its compiled programs
    study = mijax.RecursiveConfig(run=config, generations=2, filters=("variance",), pool_extra=16, chunk_size=64)
    result = mijax.run_recursive(tmp_path / "study", study)
    assert [g["generation"] for g in result["generations"]] == [0, 1]
    kept = store.load_npz(tmp_path / "study" / "gen_001" / "kept.npz")["data"]
    assert kept.shape == (2, 64, 4, 4, 1)
    row = result["generations"][1]["filters"]["variance"][0]
    assert set(row) >= {"off_pattern", "mean", "hal_quantiles", "kept_hallucination_rate", "accepted", "seed"}
    assert set(result["summary"]["variance"]) == {"off_pattern", "kept_hallucination_rate"}
    assert len(result["summary"]["variance"]["off_pattern"]) == 2


# ---------------------------------------------------------------------------------------------
# The registry.

def test_registry_resolves_defaults_and_refuses_unknown_options():
    assert {"gaussian1d", "gaussian25", "gaussian25_rotated", "gaussian8"} <= set(data.names())
    assert data.resolve("gaussian1d") == {"modes": (1.0, 2.0, 3.0), "std": 0.05, "round_robin": True, "k": 5.0}
    assert data.resolve("gaussian1d", {"modes": [1, 4]})["modes"] == (1, 4)  # JSON lists come back as tuples
    with pytest.raises(mijax.MijaxError, match="has no option 'modes'"):
        mijax.DataConfig("gaussian25", options={"modes": (1.0,)})
    with pytest.raises(mijax.MijaxError, match="unknown data.dataset 'fashion'"):
        mijax.DataConfig("fashion")
    with pytest.raises(mijax.MijaxError, match="std must be finite"):
        data.make("gaussian8", {"std": -1.0})
    assert mijax.data_config("gaussian25").n_train == 100_000 and mijax.data_config("gaussian1d").n_train == 20_000


@pytest.mark.parametrize("name", ["gaussian1d", "gaussian25", "gaussian25_rotated", "gaussian8"])
def test_mixture_data_sets_follow_the_protocol(name):
    dataset = data.make(name)
    assert isinstance(dataset, data.Dataset)
    x = jax.jit(dataset.training_set, static_argnums=1)(jax.random.key(0), 500)
    assert x.shape == (500,) + dataset.shape and x.dtype == jnp.float32
    assert not dataset.hallucinated(x).any()  # the true law is in support (5 std)
    far = x + 100.0
    assert dataset.hallucinated(far).all()
    rules = dataset.labels(np.concatenate([np.asarray(x), np.asarray(far)]))
    assert list(rules) == ["k5", "blur"] and rules["k5"].sum() == 500
    m = dataset.measure(np.asarray(x), np.asarray(dataset.reference(jax.random.key(1), 500)))
    assert m["hallucination_rate"] == 0.0 and m["modes_lost"] == 0 and set(dataset.summary_keys) <= set(m)
    json.dumps(m, allow_nan=False)


def test_cli_refuses_an_option_the_data_set_does_not_take(tmp_path, capsys):
    code = main(["train", "--dataset", "gaussian25", "--modes", "1,2", "--out", str(tmp_path / "r")])
    assert code == 2 and not (tmp_path / "r").exists()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "has no option 'modes'" in err[0]


def test_the_mlp_flattens_images_and_keeps_the_point_parameters():
    module = mijax.models.build("mlp", (4, 4, 1), options={"width": 16})
    params = module.init(jax.random.key(0), jnp.zeros((3, 4, 4, 1)), jnp.zeros((3,), jnp.int32))
    assert module.apply(params, jnp.ones((3, 4, 4, 1)), jnp.zeros((), jnp.int32)).shape == (3, 4, 4, 1)
    points = mijax.models.build("mlp", (1,))
    assert isinstance(points, mijax.ToyDenoiser)  # the checkpoints of point runs keep their parameter tree
    with pytest.raises(mijax.MijaxError, match="no option 'depth'"):
        mijax.ModelConfig(options={"depth": 3})


# ---------------------------------------------------------------------------------------------
# Run directories of mijax 0.1.

def test_a_run_written_before_the_redesign_still_samples_the_same(tmp_path):
    run = tmp_path / "old"
    shutil.copytree(LEGACY, run)
    config = mijax.runs.load_config(run)
    assert config.data.options["modes"] == (1.0, 2.0) and config.data.options["std"] == 0.05
    assert config.model.name == "mlp" and dict(config.model.options) == {"width": 16, "num_layers": 2, "tied": True}
    got = mijax.sample_run(run, 64, seed=3)
    want = store.load_npz(LEGACY.parent / "run-v0.1-samples.npz")
    # recorded by mijax 0.1 on another machine: equal up to how that CPU's matmuls round
    np.testing.assert_allclose(got["x"], want["x"], rtol=0, atol=1e-4)
    np.testing.assert_allclose(got["hal"], want["hal"], rtol=1e-3, atol=1e-6)
    # and it can be resumed under its old config (read as today's)
    mijax.train_run(run, dataclasses.replace(config, train=dataclasses.replace(config.train)), resume=True,
                    progress=False)


# ---------------------------------------------------------------------------------------------
# Files.

def test_json_is_strict_and_writes_non_finite_numbers_as_null(tmp_path):
    store.write_json(tmp_path / "m.json", {"a": math.nan, "b": [math.inf, 1.0], "c": np.float32(2.5), "d": (1, 2),
                                        "e": np.arange(2), "f": True})
    text = (tmp_path / "m.json").read_text()
    assert json.loads(text, parse_constant=lambda name: pytest.fail(name)) == {
        "a": None, "b": [None, 1.0], "c": 2.5, "d": [1, 2], "e": [0, 1], "f": True}
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]
