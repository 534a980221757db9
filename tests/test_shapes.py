"""SIMPLE SHAPES: the seeded generator reproduces the published one, the half-size images keep every shape,
and the counter labels training images valid and constructed hallucinations as what they are."""
import random

import jax
import numpy as np
import pytest
from PIL import Image, ImageDraw
from scipy import ndimage

import mijax
from mijax.data import shapes as sh
from mijax.data.images import to_model


@pytest.fixture(scope="module")
def generated():
    return sh.generate(0)


def test_the_seeded_generator_reproduces_the_published_mix(generated):
    images, metadata = generated
    assert images.shape == (5000, 64, 64) and images.dtype == np.uint8
    assert set(np.unique(images)) == {0, 255}
    assert not images[:, 63].any() and not images[:, :, 63].any()  # the last row and column stay black
    sizes = [len(m) for m in metadata]
    # SPEC section 8: one seeded run of the published script gave 2,126 / 2,170 / 704 images with 1 / 2 / 3 shapes
    assert [sizes.count(k) for k in (1, 2, 3)] == [2126, 2170, 704]
    again, _ = sh.generate(0, num_images=50)
    np.testing.assert_array_equal(again, images[:50])
    assert not np.array_equal(sh.generate(1, num_images=50)[0], images[:50])


def test_each_shape_has_the_published_size_and_place(generated):
    images, metadata = generated
    ranges = {"triangle": ((0, 10), (0, 52), 11), "square": ((1, 7), (1, 49), 7), "pentagon": ((5, 16), (5, 58), 5)}
    pixels = {"triangle": (63, 67), "square": (64, 64), "pentagon": (68, 72)}
    for image, meta in zip(images[:500], metadata[:500]):
        for shape, x1, y1, side in meta:
            (xlo, xhi), (ylo, yhi), size = ranges[shape]
            assert xlo <= x1 <= xhi and ylo <= y1 <= yhi and side == size
            k = sh.SHAPES.index(shape)
            strip = image[:63, 21 * k:21 * k + 21]
            lo, hi = pixels[shape]
            assert lo <= int(np.sum(strip == 255)) <= hi
        present = {m[0] for m in meta}
        for k, shape in enumerate(sh.SHAPES):
            assert (shape in present) == bool(image[:63, 21 * k:21 * k + 21].any())


@pytest.mark.parametrize("size", [64, 32])
def test_every_training_image_counts_valid_with_its_shapes(generated, size):
    images, metadata = generated
    x = images[:1500] if size == 64 else sh.half_size(images[:1500])
    counts = sh.count(to_model(x))
    assert sh.summarize_labels(counts) == {"blank": 0, "valid": 1500, "duplicate": 0, "outside": 0, "malformed": 0}
    want = np.array([[sum(m[0] == s for m in meta) for s in sh.SHAPES] for meta in metadata[:1500]])
    np.testing.assert_array_equal(counts.shapes, want)
    assert counts.well_formed().all() and np.array_equal(counts.background, np.zeros(1500))  # black, exactly


def _square(image, row, col):
    """An 8 x 8 square (the generator's) with its top-left corner at (row, col) of a 64 x 64 image."""
    image[row:row + 8, col:col + 8] = 255
    return image


CASES = {
    # name: (image builder, label at 64, square position)
    "one square, top": (lambda: _square(np.zeros((64, 64), np.uint8), 5, 25), "valid", "top"),
    "one square, bottom": (lambda: _square(np.zeros((64, 64), np.uint8), 45, 25), "valid", "bottom"),
    "two squares, top and bottom": (lambda: _square(_square(np.zeros((64, 64), np.uint8), 5, 25), 45, 25),
                                    "duplicate", "two"),
    "two squares merged into one blob": (lambda: _square(_square(np.zeros((64, 64), np.uint8), 20, 25), 27, 26),
                                         "duplicate", "two"),
    "a blob across the triangle and square strips": (lambda: _bar(12, 30), "outside", "none"),
    "a tiny blob": (lambda: _blob(20, 28, 3, 3), "malformed", "none"),
    "a huge blob": (lambda: _blob(5, 23, 18, 18), "malformed", "none"),
    "a square plus a speck": (lambda: _speck(_square(np.zeros((64, 64), np.uint8), 30, 25)), "valid", "bottom"),
    "blank": (lambda: np.zeros((64, 64), np.uint8), "blank", "none"),
    "blank with a speck": (lambda: _speck(np.zeros((64, 64), np.uint8)), "blank", "none"),
}


def _bar(start, stop):
    image = np.zeros((64, 64), np.uint8)
    image[30:34, start:stop] = 255
    return image


def _blob(row, col, h, w):
    image = np.zeros((64, 64), np.uint8)
    image[row:row + h, col:col + w] = 255
    return image


def _speck(image):
    image[50, 50:52] = 255
    return image


@pytest.mark.parametrize("name", list(CASES))
def test_the_counter_labels_constructed_images(name):
    build, label, position = CASES[name]
    counts = sh.count(build()[None])
    assert counts.label_names() == [label]
    assert sh.POSITIONS[counts.square_position[0]] == position


@pytest.mark.parametrize("name", ["one square, top", "two squares, top and bottom", "two squares merged into one blob",
                                  "a huge blob", "blank"])
def test_the_half_size_counter_agrees(name):
    build, label, position = CASES[name]
    counts = sh.count(sh.half_size(build()[None]))
    assert counts.label_names() == [label] and sh.POSITIONS[counts.square_position[0]] == position


def test_a_half_size_blob_across_strips_is_outside():
    image = np.zeros((32, 32), np.uint8)
    image[14:16, 6:16] = 255  # columns 6-15 run from the triangle strip over gap column 10 into the square strip
    assert sh.count(image[None]).label_names() == ["outside"]


def _drawn(shape, positions, canvas=sh.STRIP):
    """uint8 [height, width] of a PIL canvas (width, height), ``shape`` drawn at each (x1, y1) by the
    generator's own code."""
    image = Image.new("L", canvas, color=0)
    for x1, y1 in positions:
        sh._draw_shape(ImageDraw.Draw(image), shape, x1, y1)
    return np.asarray(image, np.uint8)


def _image(strips, rng=None):
    """A 64 x 64 image laid out as the generator lays strips out: {k: uint8 [63, 21]} in strip k, the other
    strips drawn by the generator from ``rng`` (or black)."""
    image = np.zeros((64, 64), np.uint8)
    for k, shape in enumerate(sh.SHAPES):
        strip = strips[k] if k in strips else sh._draw_strip(rng, shape, 0.5)[0] if rng else 0
        image[:63, 21 * k:21 * k + 21] = strip
    return image


def _sized(images, size):
    return images if size == 64 else sh.half_size(images)


def _copies_below(n, seed, most=10):
    """n images with two copies of one shape in its strip, the second 1..``most`` rows below the first
    (overlapping: one taller blob, or apart), at the generator's positions, the other strips generated.

    Returns (images uint8 [n, 64, 64], the strip of the pair [n], the pair's area over one copy's [n])."""
    rng = random.Random(seed)
    images, strips, ratios = [], [], []
    for _ in range(n):
        k = rng.randrange(3)
        (xlo, xhi), (ylo, yhi) = sh._position_ranges(sh.SHAPES[k])
        dy = rng.randint(1, most)
        x1, y1 = rng.randint(xlo, xhi), rng.randint(ylo, yhi - dy)
        one, two = _drawn(sh.SHAPES[k], [(x1, y1)]), _drawn(sh.SHAPES[k], [(x1, y1), (x1, y1 + dy)])
        images.append(_image({k: two}, rng))
        strips.append(k)
        ratios.append(np.sum(two > 0) / np.sum(one > 0))
    return np.stack(images), np.array(strips), np.array(ratios)


def test_two_copies_a_few_rows_apart_are_never_valid_at_full_size():
    # a blob of two copies is a merged pair (duplicate) when it covers >= 1.6 copies' area, else malformed
    images, strips, ratios = _copies_below(400, seed=0)
    counts = sh.count(images)
    want = np.where(ratios >= sh.MERGED, "duplicate", "malformed")
    np.testing.assert_array_equal(counts.label_names(), want)
    np.testing.assert_array_equal(counts.shapes[np.arange(len(strips)), strips], np.where(want == "duplicate", 2, 0))
    assert {"duplicate", "malformed"} <= set(want[ratios < 2])  # overlapping pairs on both sides of 1.6


def test_two_copies_a_few_rows_apart_are_never_valid_at_half_size():
    images, strips, ratios = _copies_below(400, seed=1)
    x = sh.half_size(images)
    labels = np.array(sh.count(x).label_names())
    # taller than any outline the generator draws at 32 x 32: not one shape. A shift of a row or two can pool
    # into one shape's outline (or one pixel from it): those may be valid or malformed, never a duplicate.
    tallest = [max(outline.shape[0] for outline in outlines) for outlines in sh._outlines(32)]
    heights = np.array([np.ptp(np.nonzero(image[:, 11 * k:11 * k + 10])[0]) + 1 for image, k in zip(x, strips)])
    taller = heights > np.array(tallest)[strips]
    assert taller.mean() > 0.8 and set(labels[~taller]) <= {"valid", "malformed"}
    assert set(labels[taller]) == {"duplicate", "malformed"}
    # pooling moves the merged-pair threshold by up to a row: exact away from it
    assert (labels[taller & (ratios < 1.5)] == "malformed").all() and (labels[ratios >= 1.9] == "duplicate").all()


@pytest.mark.parametrize("size", [64, 32])
def test_a_square_drawn_across_a_strip_border_is_outside(size):
    rng = random.Random(2)
    # columns of the full image: x..x+7 spans the triangle | square border (20 | 21) or the square | pentagon
    # one (41 | 42). At 32 x 32 x = 20 and 41 leave only the dropped strip column on the left: no trace there.
    xs = [*range(14, 20), *range(35, 41)] + ([20, 41] if size == 64 else [])
    images = []
    for _ in range(300):
        x = rng.choice(xs)
        image = _image({1 if x < 35 else 0: 0}, rng)  # the far strip as generated, the near ones black
        image[:63, :63] |= _drawn("square", [(x, rng.randint(1, 49))], canvas=(63, 63))
        images.append(image)
    assert set(sh.count(_sized(np.stack(images), size)).label_names()) == {"outside"}


@pytest.mark.parametrize("size", [64, 32])
def test_shapes_facing_each_other_across_a_border_stay_valid(size):
    # a triangle at its rightmost place and a square at its leftmost: one gap column apart at 32 x 32
    rng = random.Random(3)
    images = np.stack([_image({0: _drawn("triangle", [(10, rng.randint(0, 52))]),
                               1: _drawn("square", [(1, rng.randint(1, 49))])}, rng) for _ in range(300)])
    counts = sh.count(_sized(images, size))
    assert set(counts.label_names()) == {"valid"} and (counts.shapes[:, :2] == 1).all()


@pytest.mark.parametrize("size", [64, 32])
def test_two_separate_copies_anywhere_in_a_strip_are_a_duplicate(size):
    rng = random.Random(4)
    images, strips = [], []
    while len(images) < 300:
        k = rng.randrange(3)
        (xlo, xhi), (ylo, yhi) = sh._position_ranges(sh.SHAPES[k])
        pair = _drawn(sh.SHAPES[k], [(rng.randint(xlo, xhi), rng.randint(ylo, yhi)) for _ in range(2)])
        if ndimage.label(pair, structure=np.ones((3, 3)))[1] == 2:  # apart at 64 x 64 (at 32 they may touch)
            images.append(_image({k: pair}, rng))
            strips.append(k)
    counts = sh.count(_sized(np.stack(images), size))
    assert set(counts.label_names()) == {"duplicate"}
    assert (counts.shapes[np.arange(300), strips] == 2).all()


def test_noise_is_not_valid():
    noise = (np.random.default_rng(0).random((20, 64, 64)) < 0.3).astype(np.uint8) * 255
    assert "valid" not in sh.count(noise).label_names()


@pytest.mark.parametrize("size", [64, 32])
def test_background_noise_is_the_deviation_from_black_off_the_shapes(generated, size):
    """Grey noise below the threshold off the shapes is measured, the shapes themselves are not; the images stay
    valid, so the well-formed share does not see the noise."""
    images = generated[0][:40] if size == 64 else sh.half_size(generated[0][:40])
    x = to_model(images)
    shape = x > 0
    noise = np.random.default_rng(1).uniform(0.0, 0.8, x.shape).astype(np.float32)  # below mid-grey
    noisy = np.where(shape, x, x + noise)
    counts = sh.count(noisy)
    assert counts.well_formed().all()
    want = [np.mean(n[~s]) for n, s in zip(noise, shape)]  # shapes' own pixels never count
    np.testing.assert_allclose(counts.background, want, rtol=1e-5)
    measured = sh.ShapesDataset("shapes", size, 0, 5_000).measure(noisy, None)
    assert measured["well_formed_share"] == 1.0 and measured["background_noise"] == pytest.approx(np.mean(want))


def test_the_counter_rejects_other_shapes():
    with pytest.raises(ValueError, match="64 or 32"):
        sh.count(np.zeros((2, 28, 28)))


def test_the_shapes_data_set(tmp_path):
    config = mijax.DataConfig("shapes", n_train=64, options={"size": 32, "num_images": 200})
    assert config.options == {"size": 32, "seed": 0, "num_images": 200}
    dataset = mijax.data.make("shapes", config.options)
    assert dataset.shape == (32, 32, 1)
    keys = mijax.seed_keys([0, 1])
    run = mijax.RunConfig(data=config, train=mijax.TrainConfig(batch_size=64))
    data = mijax.config.training_data(run, dataset, keys)  # jitted, vmapped over seeds
    assert data.shape == (2, 64, 32, 32, 1) and float(data.min()) == -1.0 and float(data.max()) == 1.0
    assert not np.array_equal(np.asarray(data[0]), np.asarray(data[1]))  # each seed its own order
    assert not dataset.hallucinated(np.asarray(data[0])).any()
    measured = dataset.measure(np.asarray(data[0]), None)
    assert measured["valid_share"] == 1.0 and measured["duplicate_share"] == 0.0
    assert sum(measured["square_position"].values()) == pytest.approx(1.0)
    with pytest.raises(mijax.MijaxError, match="64 or 32"):
        mijax.data.make("shapes", {"size": 48})
    with pytest.raises(ValueError, match="cannot train on"):
        dataset.training_set(jax.random.key(0), 500)


def test_the_command_line_passes_data_and_model_options(capsys):
    from mijax import cli

    args = cli.build_parser().parse_args(["train", "--dataset", "shapes", "--data-option", "size=32", "--data-option",
                                          "num_images=300", "--model-option", "width=64", "--untied", "--n-train",
                                          "300", "--batch-size", "100", "--out", "unused"])
    config = cli._run_config(args)
    unet = cli._run_config(cli.build_parser().parse_args(["train", "--dataset", "shapes", "--model", "unet",
                                                          "--model-option", "mults=[1,2]", "--model-option",
                                                          "dropout=0.1", "--ema-decay", "0.999", "--batch-size", "64",
                                                          "--out", "unused"]))
    assert unet.model.name == "unet" and unet.model.options["mults"] == (1, 2) and unet.model.options["dropout"] == 0.1
    assert unet.train.ema_decay == 0.999 and config.train.ema_decay == 0.0
    assert dict(config.data.options) == {"size": 32, "seed": 0, "num_images": 300}
    assert dict(config.model.options) == {"width": 64, "num_layers": 3, "tied": False}
    assert config.train.steps == 30_000  # 10,000 epochs of 300 // 100 batches
    code = cli.main(["train", "--dataset", "shapes", "--data-option", "size=48", "--batch-size", "64", "--out", "unused"])
    assert code == 2 and "64 or 32" in capsys.readouterr().err
    code = cli.main(["train", "--dataset", "shapes", "--model", "unet", "--batch-size", "64", "--ema-decay", "1",
                     "--out", "unused"])
    assert code == 2 and "--ema-decay: train.ema_decay must be < 1, got 1.0" in capsys.readouterr().err
    assert cli.main(["data"]) == 0
    listed = capsys.readouterr().out
    assert "shapes" in listed and "size=64" in listed and "model    mlp" in listed
