"""SIMPLE SHAPES: the paper's image data set, its generator reproduced with a seed, and a
counter that labels generated images.

**The generator** follows the published one call for call: each image is three strips of 21 x 63 pixels,
drawn separately with PIL (``Image.new("L", (21, 63))``, ``ImageDraw``, fill and outline 255) and laid side
by side, triangle | square | pentagon, into rows 0-62 and columns 0-62 of a 64 x 64 image (the last row and
column stay black). Each shape is present with probability ``p = 0.5`` (``random() <= p``), at most once;
blank images are skipped; at most 8,000 candidates are drawn and generation stops at 5,000 images. Sizes come
from ``area = 60``: a square of side 7 (``rectangle([x1, y1, x1 + 7, y1 + 7])``, 64 px, x1 in 1..7, y1 in
1..49), a triangle of side 11 pointing down ((x1, y1), (x1 + 11, y1), (x1 + 5, y1 + 9); x1 in 0..10, y1 in
0..52), a pentagon of circumradius 5 (vertices at 72, 144, ..., 360 degrees, x1 in 5..16, y1 in 5..58). The
randomness is Python's ``random.Random(seed)`` (the published script is unseeded), drawn in the published
order: per strip ``random()``, then, if the shape is present, its x and then its y.

**Half size** (32 x 32, for CPUs), derived from the full images in one way: each strip's first 20 columns and
first 62 rows are pooled 2 x 2, a pixel white when at least two of its four are; the three 10 x 31 strips
are laid out at columns 0-9, 11-20 and 22-31 with one black column between them, and row 31 is black. (Strip
column 20 and row 62, where a few extreme shapes put a sliver, are dropped.)

**The counter** thresholds at mid-grey and finds 8-connected components over the whole image (so a blob
that spills from one strip into another is one component), drops specks (under 5 pixels at 64 x 64, 2 at
32 x 32), and labels each image: ``blank`` (no component), ``duplicate`` (a strip with two or more
components, or one component of about twice its shape's area: a merged pair), ``outside`` (a component that
spans two strips), ``malformed`` (a component whose area is far from its strip's shape), else ``valid``, in
that order of precedence. In training images shapes never span strips: column 21 (between triangle and
square) and columns 36-41 are always black at 64 x 64, as are the gap columns at 32 x 32.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import random
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mijax.data import register

SHAPES = ("triangle", "square", "pentagon")  # the strips, left to right
LABELS = ("blank", "valid", "duplicate", "outside", "malformed")
POSITIONS = ("none", "top", "bottom", "two")  # of the square strip, for the region figure
STRIP = (21, 63)  # width, height of a strip (PIL's (x, y) order)
AREA = 60


# ---------------------------------------------------------------------------------------------
# The generator.

# Each shape's size from ``AREA``, as the generator computes it: a square's side, a triangle's side, a
# pentagon's circumradius.
_SIDE = {"square": int(AREA ** 0.5), "triangle": int(math.sqrt(4 * AREA / math.sqrt(3))),
        "pentagon": int(math.sqrt(4 * AREA / math.sqrt(5 * (5 + 2 * math.sqrt(5)))))}


def _position_ranges(shape: str) -> tuple[tuple[int, int], tuple[int, int]]:
    """The generator's inclusive ranges of x1 and of y1 for ``shape``, in strip coordinates."""
    side = _SIDE[shape]
    if shape == "square":
        return (1, STRIP[0] - 2 * side), (1, STRIP[1] - 2 * side)
    if shape == "triangle":
        return (0, STRIP[0] - side), (0, STRIP[1] - side)
    return (side, STRIP[0] - side), (side, STRIP[1] - side)


def _draw_shape(draw, shape: str, x1: int, y1: int) -> None:
    """Draw ``shape`` at (x1, y1) on a PIL ``ImageDraw`` (any canvas) as the published generator does."""
    side = _SIDE[shape]
    if shape == "square":
        draw.rectangle([x1, y1, x1 + side, y1 + side], fill=255, outline=255)
    elif shape == "triangle":
        vertices = [(x1, y1), (x1 + side, y1), (x1 + side // 2, y1 + int(side * math.sqrt(3) / 2))]
        draw.polygon(vertices, fill=255, outline=255)
    else:
        vertices = [(x1 + side * math.cos(math.radians(72 * (k + 1))), y1 - side * math.sin(math.radians(72 * (k + 1))))
                    for k in range(5)]
        draw.polygon(vertices, fill=255, outline=255)


def _draw_strip(rng: random.Random, shape: str, p: float):
    """One strip, uint8 [63, 21], and the shape's metadata (or None), as the published generator draws it."""
    from PIL import Image, ImageDraw

    image = Image.new("L", STRIP, color=0)
    meta = None
    if rng.random() <= p:
        (xlo, xhi), (ylo, yhi) = _position_ranges(shape)
        x1, y1 = rng.randint(xlo, xhi), rng.randint(ylo, yhi)
        _draw_shape(ImageDraw.Draw(image), shape, x1, y1)
        meta = (shape, x1, y1, _SIDE[shape])
    return np.asarray(image, np.uint8), meta


def generate(seed: int, num_images: int = 5_000, max_draws: int = 8_000, p: float = 0.5):
    """The published SIMPLE SHAPES generator, seeded.

    Returns:
      (images uint8 [M, 64, 64] in {0, 255}, metadata: per image a list of (shape, x1, y1, size) in strip
      coordinates); M = num_images unless ``max_draws`` candidates run out first.
    """
    rng = random.Random(seed)
    images, metadata = [], []
    for _ in range(max_draws):
        strips, meta = zip(*(_draw_strip(rng, shape, p) for shape in SHAPES))
        present = [m for m in meta if m is not None]
        if present:
            image = np.zeros((64, 64), np.uint8)
            image[:63, :63] = np.concatenate(strips, axis=1)
            images.append(image)
            metadata.append(present)
        if len(images) >= num_images:
            break
    return np.stack(images), metadata


def half_size(images: np.ndarray) -> np.ndarray:
    """64 x 64 images [M, 64, 64] -> 32 x 32 [M, 32, 32] as the module docstring says (uint8 in {0, 255})."""
    images = np.asarray(images)
    out = np.zeros(images.shape[:-2] + (32, 32), np.uint8)
    for k, start in enumerate((0, 21, 42)):
        strip = images[..., :62, start:start + 20].astype(np.int32)  # [M, 62, 20]
        pooled = strip.reshape(strip.shape[:-2] + (31, 2, 10, 2)).sum(axis=(-3, -1))  # [M, 31, 10]
        out[..., :31, 11 * k:11 * k + 10] = np.where(pooled >= 2 * 255, 255, 0)
    return out


@functools.lru_cache(maxsize=4)
def training_images(seed: int, size: int, num_images: int = 5_000) -> np.ndarray:
    """The generated training images at ``size`` (64 or 32), uint8 [M, size, size]; cached per process."""
    images, _ = generate(seed, num_images)
    return images if size == 64 else half_size(images)


# ---------------------------------------------------------------------------------------------
# The counter.

@dataclasses.dataclass(frozen=True)
class Geometry:
    """Where the strips are and how big their shapes are, at one image size."""

    size: int
    strips: tuple[tuple[int, int], ...]  # first and last column of each strip (gap columns go left)
    areas: tuple[float, ...]  # a shape's typical area in pixels, per strip
    speck: int  # components under this many pixels are ignored

    def strip_of(self, column: int) -> int:
        return next(k for k, (lo, hi) in enumerate(self.strips) if lo <= column <= hi)


# Areas: the medians over the 5,000 generated images of seed 0 (measured; ranges in brackets): at 64 x 64
# triangle 65 [64, 65], square 64, pentagon 70 [69, 70] (the published counts); at 32 x 32 triangle 19
# [16, 21], square 20 [16, 21], pentagon 19 [18, 20].
GEOMETRY = {64: Geometry(64, ((0, 20), (21, 41), (42, 63)), (65.0, 64.0, 70.0), 5),
            32: Geometry(32, ((0, 10), (11, 21), (22, 31)), (19.0, 20.0, 19.0), 2)}
SINGLE = (0.5, 1.6)  # a component whose area / the shape's is in [0.5, 1.6) is one shape
MERGED = (1.6, 2.6)  # in [1.6, 2.6] two shapes merged into one blob; outside both ranges, malformed


@dataclasses.dataclass(frozen=True)
class Counts:
    """What the counter finds in images [M, ...]."""

    labels: np.ndarray  # int [M], indices into LABELS
    shapes: np.ndarray  # int [M, 3], shapes counted per strip (a merged pair counts 2)
    square_position: np.ndarray  # int [M], indices into POSITIONS

    def label_names(self) -> list[str]:
        return [LABELS[i] for i in self.labels]


def _components(binary: np.ndarray, speck: int):
    from scipy import ndimage

    labelled, count = ndimage.label(binary, structure=np.ones((3, 3), bool))
    for index in range(1, count + 1):
        rows, cols = np.nonzero(labelled == index)
        if rows.size >= speck:
            yield rows, cols


def count(images, size: int | None = None) -> Counts:
    """Label images [M, H, W] or [M, H, W, 1] (uint8 {0..255} or float in [-1, 1]; mid-grey is the threshold).

    See the module docstring for the labels; ``shapes`` counts the shapes per strip, ``square_position`` is
    ``top`` / ``bottom`` for one square centred above / below the middle row, ``two`` for two or more
    (malformed components are not counted as shapes).
    """
    x = np.asarray(images)
    if x.ndim == 4:
        x = x[..., 0]
    if x.ndim != 3 or x.shape[1] != x.shape[2] or x.shape[1] not in GEOMETRY:
        raise ValueError(f"count needs images [M, H, W(, 1)] of size 64 or 32, got {np.shape(images)}")
    geometry = GEOMETRY[size or x.shape[1]]
    binary = x > (127.5 if x.dtype == np.uint8 else 0.0)
    labels = np.zeros(len(x), np.int32)
    shapes = np.zeros((len(x), 3), np.int32)
    position = np.zeros(len(x), np.int32)
    middle = (geometry.size - 1) / 2
    for i, image in enumerate(binary):
        outside = malformed = duplicate = False
        found = 0
        square_rows = []
        for rows, cols in _components(image, geometry.speck):
            found += 1
            strips = {geometry.strip_of(int(c)) for c in (cols.min(), cols.max())}
            if len(strips) > 1:
                outside = True
                continue
            strip = strips.pop()
            ratio = rows.size / geometry.areas[strip]
            copies = 1 if SINGLE[0] <= ratio < SINGLE[1] else 2 if MERGED[0] <= ratio <= MERGED[1] else 0
            malformed |= copies == 0
            shapes[i, strip] += copies
            if strip == 1:
                square_rows += [rows.mean()] * copies
        duplicate = bool(np.any(shapes[i] >= 2))
        labels[i] = LABELS.index("blank" if found == 0 else "duplicate" if duplicate else "outside" if outside
                                 else "malformed" if malformed else "valid")
        position[i] = POSITIONS.index("none" if not square_rows else "two" if len(square_rows) >= 2
                                      else "top" if square_rows[0] < middle else "bottom")
    return Counts(labels, shapes, position)


# ---------------------------------------------------------------------------------------------
# The data set.

@dataclasses.dataclass(frozen=True)
class ShapesDataset:
    """SIMPLE SHAPES as a data set (see :mod:`mijax.data`): images [N, size, size, 1] in [-1, 1].

    The training set of a model is the generated set (``seed``, ``num_images``) in an order (and, for
    n below ``num_images``, a subset) drawn from the model's key; hallucinated samples are the counter's
    ``duplicate`` images (two copies of a shape: claim 7).
    """

    name: str
    size: int
    seed: int
    num_images: int
    summary_keys: tuple[str, ...] = ("duplicate_share", "valid_share", "outside_share", "malformed_share",
                                     "blank_share")

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.size, self.size, 1)

    @property
    def hal_regions(self) -> tuple[tuple[int, int, int, int], ...]:
        """The three strips as boxes ``(row_start, row_stop, col_start, col_stop)``: the regions of the
        ``region_max`` Hal reduction (the per-strip maximum, :data:`mijax.hal.HAL_REDUCTIONS`)."""
        return tuple((0, self.size, lo, hi + 1) for lo, hi in GEOMETRY[self.size].strips)

    def images(self) -> np.ndarray:
        """The generated training images, uint8 [M, size, size]."""
        return training_images(self.seed, self.size, self.num_images)

    def training_size(self) -> int:
        """The generated images (the most a model can train on; under ``num_images`` if the draws ran out)."""
        return len(self.images())

    def training_set(self, key: jax.Array, n: int) -> jnp.ndarray:
        """n of the generated images, float32 [n, size, size, 1] in [-1, 1], in an order drawn from ``key``."""
        images = self.images()
        if n > len(images):
            raise ValueError(f"the shapes data set has {len(images)} images; cannot train on {n}")
        order = jax.random.permutation(key, len(images))[:n]
        return (jnp.asarray(images)[order][..., None].astype(jnp.float32) - 127.5) / 127.5  # exactly -1 and 1

    def reference(self, key: jax.Array, n: int) -> jnp.ndarray:
        return self.training_set(key, min(n, len(self.images())))

    def hallucinated(self, x) -> np.ndarray:
        """Two or more copies of a shape in one strip (or a merged pair): bool [N]."""
        return count(x).labels == LABELS.index("duplicate")

    def labels(self, x) -> dict[str, np.ndarray]:
        counts = count(x)
        return {"duplicate": counts.labels == LABELS.index("duplicate"),
                "not_valid": counts.labels != LABELS.index("valid")}

    def measure(self, x, reference) -> dict:
        """The share of samples x [N, size, size, 1] per counter label and per square position."""
        counts = count(x)
        n = max(len(counts.labels), 1)
        out = {f"{name}_share": float(np.sum(counts.labels == i) / n) for i, name in enumerate(LABELS)}
        out["square_position"] = {name: float(np.sum(counts.square_position == i) / n)
                                  for i, name in enumerate(POSITIONS)}
        return out


def _make(size: int = 64, seed: int = 0, num_images: int = 5_000) -> ShapesDataset:
    if size not in GEOMETRY:
        raise ValueError(f"size must be 64 or 32 (half size), got {size!r}")
    if not (isinstance(num_images, int) and num_images > 0):
        raise ValueError(f"num_images must be an integer > 0, got {num_images!r}")
    return ShapesDataset("shapes", int(size), int(seed), int(num_images))


register("shapes", _make, n_train=5_000, summary="SIMPLE SHAPES: a triangle, a square, a pentagon, each at most "
         "once, 64 x 64 (size 32: half size)", size=64, seed=0, num_images=5_000)


def summarize_labels(counts: Counts) -> dict[str, int]:
    """How many images carry each label."""
    return {name: int(np.sum(counts.labels == i)) for i, name in enumerate(LABELS)}


__all__: Sequence[str] = ("GEOMETRY", "LABELS", "POSITIONS", "SHAPES", "Counts", "ShapesDataset", "count", "generate",
                          "half_size", "summarize_labels", "training_images")
