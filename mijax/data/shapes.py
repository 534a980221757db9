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
that spills from one strip into another is one component; at 32 x 32 a gap column also joins white pixels that
face each other across it, as the two halves of a shape drawn across a strip border do there), drops specks
(under 5 pixels at 64 x 64, 2 at 32 x 32) and splits each component at the strip borders. Each part is
matched by outline, not only by area, to the outlines the generator draws for its strip's shape at that size
(from every position, so at 32 x 32 every phase of the pooling), laid at any shift: it is *one shape* when
one outline differs from it in under ``TOLERANCE`` (10%) of the shape's area (at most 6 pixels at 64 x 64, 1
at 32 x 32; a copy one row lower adds 8 or more at 64 x 64), *a merged pair* when two outlines do (under 10% of
two areas) and it covers at least ``MERGED`` (1.6) copies' area, so that the copies share at most 40% of one,
and *malformed* otherwise. Two copies that overlap more are malformed, not a merged pair: such a blob reads as
one shape drawn too tall as much as two shapes (a square and its copy one row lower make an 8 x 9 rectangle),
and at 32 x 32 a shift of a row or two can even pool into one shape's outline; ``duplicate`` counts images that
show two copies.

Each image gets a label: ``blank`` (no component), ``duplicate`` (a strip with two or more shapes, separate or
a merged pair), ``outside`` (a component across a strip border whose parts are not each shapes of their
strips; parts that are, such as a triangle and a square facing each other across the gap column at 32 x 32,
count as those shapes), ``malformed`` (a part that is neither one shape nor a merged pair), else ``valid``, in
that order of precedence. In training images shapes never span strips: column 21 (between triangle and
square) and columns 36-41 are always black at 64 x 64, as are the gap columns at 32 x 32. (A shape that
crosses a border only by the strip column that half size drops leaves no trace of it at 32 x 32.)
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
    gaps: tuple[int, ...]  # the black columns that half_size puts between strips (none at 64 x 64)
    areas: tuple[float, ...]  # a shape's typical area in pixels, per strip
    speck: int  # components (and a component's parts in a strip) under this many pixels are ignored

    def strip_of(self, columns: np.ndarray) -> np.ndarray:
        """The strip of each column, int [...] like ``columns``."""
        return np.searchsorted([lo for lo, _ in self.strips], columns, side="right") - 1


# Areas: the medians over the 5,000 generated images of seed 0 (measured; ranges in brackets): at 64 x 64
# triangle 65 [64, 65], square 64, pentagon 70 [69, 70] (the published counts); at 32 x 32 triangle 19
# [16, 21], square 20 [16, 21], pentagon 19 [18, 20].
GEOMETRY = {64: Geometry(64, ((0, 20), (21, 41), (42, 63)), (), (65.0, 64.0, 70.0), 5),
            32: Geometry(32, ((0, 10), (11, 21), (22, 31)), (10, 21), (19.0, 20.0, 19.0), 2)}
TOLERANCE = 0.1  # an outline is one of k copies when it differs in under this share of k shapes' area
MERGED = 1.6  # two copies are a merged pair when their blob covers at least this many copies' area


@dataclasses.dataclass(frozen=True)
class Counts:
    """What the counter finds in images [M, ...]."""

    labels: np.ndarray  # int [M], indices into LABELS
    shapes: np.ndarray  # int [M, 3], shapes counted per strip (a merged pair counts 2)
    square_position: np.ndarray  # int [M], indices into POSITIONS
    background: np.ndarray  # float [M], the mean |pixel + 1| (in [-1, 1]) outside every counted component

    def label_names(self) -> list[str]:
        return [LABELS[i] for i in self.labels]

    def well_formed(self) -> np.ndarray:
        """bool [M]: the images whose every shape is drawn as the generator draws it, valid or duplicate
        (not blank, malformed or across a strip border)."""
        return (self.labels == LABELS.index("valid")) | (self.labels == LABELS.index("duplicate"))


@functools.lru_cache(maxsize=2)
def _outlines(size: int) -> tuple[tuple[np.ndarray, ...], ...]:
    """Per strip, every distinct outline the generator draws for its shape at ``size`` (64 or 32), each bool
    [h, w] cropped to the shape: one or two at 64 x 64 (the shape clipped by the strip's right edge or not),
    four to six at 32 x 32 (the phases of the 2 x 2 pooling)."""
    from PIL import Image, ImageDraw

    per_strip = []
    for k, shape in enumerate(SHAPES):
        (xlo, xhi), (ylo, yhi) = _position_ranges(shape)
        positions = [(x1, y1) for x1 in range(xlo, xhi + 1) for y1 in range(ylo, yhi + 1)]
        images = np.zeros((len(positions), 64, 64), np.uint8)
        for image, (x1, y1) in zip(images, positions):
            strip = Image.new("L", STRIP, color=0)
            _draw_shape(ImageDraw.Draw(strip), shape, x1, y1)
            image[:63, STRIP[0] * k:STRIP[0] * (k + 1)] = np.asarray(strip, np.uint8)
        distinct = {}
        for image in (images if size == 64 else half_size(images)) > 127:
            rows, cols = np.nonzero(image)
            outline = image[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
            distinct.setdefault((outline.shape, outline.tobytes()), outline)
        per_strip.append(tuple(distinct.values()))
    return tuple(per_strip)


def _fit(mask: np.ndarray, outlines: Sequence[np.ndarray], copies: int) -> tuple[int, float]:
    """Lay ``copies`` outlines over a component (bool [h, w]) one at a time, each (of all ``outlines``, at any
    shift) where it covers the most uncovered component pixels less the background pixels it adds.

    Returns:
      (the pixels where the component and the union of the laid outlines differ, the laid outlines' mean area).
    """
    margin = max(max(outline.shape) for outline in outlines)
    component = np.pad(mask, margin)
    drawn = np.zeros_like(component)
    areas = []
    for _ in range(copies):
        # +1 where a copy would cover a component pixel not yet covered, -1 where it would add background
        gain_map = (component & ~drawn).astype(np.int32) - (~component & ~drawn).astype(np.int32)
        best = None
        for outline in outlines:
            windows = np.lib.stride_tricks.sliding_window_view(gain_map, outline.shape)
            gains = np.einsum("ijkl,kl->ij", windows, outline.astype(np.int32))
            at = np.unravel_index(np.argmax(gains), gains.shape)
            if best is None or gains[at] > best[0]:
                best = (gains[at], outline, at)
        _, outline, (row, col) = best
        drawn[row:row + outline.shape[0], col:col + outline.shape[1]] |= outline
        areas.append(int(outline.sum()))
    return int(np.sum(component ^ drawn)), float(np.mean(areas))


def _copies(rows: np.ndarray, cols: np.ndarray, outlines: Sequence[np.ndarray], area: float) -> int:
    """How many copies of its strip's shape the pixels (rows, cols) [P] of a component are: 1 when one of the
    shape's ``outlines`` fits them, 2 when two do and they cover at least ``MERGED`` copies' area (a merged
    pair), else 0 (malformed). k outlines fit when they differ from the pixels in under ``TOLERANCE`` times k
    times ``area`` (the shape's typical area) pixels."""
    mask = np.zeros((rows.max() - rows.min() + 1, cols.max() - cols.min() + 1), bool)
    mask[rows - rows.min(), cols - cols.min()] = True
    sizes = [int(outline.sum()) for outline in outlines]
    for copies in (1, 2):
        tolerance = TOLERANCE * copies * area
        least = min(sizes) * (MERGED if copies == 2 else 1) - tolerance
        if not least <= rows.size < copies * max(sizes) + tolerance:
            continue  # no fit can be close enough
        mismatch, copy_area = _fit(mask, outlines, copies)
        if mismatch < tolerance and (copies == 1 or rows.size >= MERGED * copy_area):
            return copies
    return 0


def _components(binary: np.ndarray, geometry: Geometry):
    """The 8-connected components of a binary image [H, W] as (rows, cols) of their pixels, those under
    ``geometry.speck`` pixels dropped. A gap column joins white pixels that face each other across it (rows
    at most one apart), as a shape drawn across a strip border has them at 32 x 32; the gap pixels so added
    are not part of the components."""
    from scipy import ndimage

    bridged = binary.copy()
    for gap in geometry.gaps:
        near = [np.convolve(binary[:, c], np.ones(3), mode="same") > 0 for c in (gap - 1, gap + 1)]
        bridged[:, gap] |= near[0] & near[1]
    labelled, count = ndimage.label(bridged, structure=np.ones((3, 3), bool))
    labelled[~binary] = 0
    for index in range(1, count + 1):
        rows, cols = np.nonzero(labelled == index)
        if rows.size >= geometry.speck:
            yield rows, cols


def count(images, size: int | None = None) -> Counts:
    """Label images [M, H, W] or [M, H, W, 1] (uint8 {0..255} or float in [-1, 1]; mid-grey is the threshold).

    See the module docstring for the labels; ``shapes`` counts the shapes per strip, ``square_position`` is
    ``top`` / ``bottom`` for one square centred above / below the middle row, ``two`` for two or more
    (malformed components are not counted as shapes). ``background`` is each image's noise off the shapes: the
    mean absolute deviation from black (-1 on the [-1, 1] scale) of the pixels outside every counted
    component (specks included); 0 for an image whose background is black.
    """
    x = np.asarray(images)
    if x.ndim == 4:
        x = x[..., 0]
    if x.ndim != 3 or x.shape[1] != x.shape[2] or x.shape[1] not in GEOMETRY:
        raise ValueError(f"count needs images [M, H, W(, 1)] of size 64 or 32, got {np.shape(images)}")
    geometry = GEOMETRY[size or x.shape[1]]
    outlines = _outlines(geometry.size)
    binary = x > (127.5 if x.dtype == np.uint8 else 0.0)
    level = x / 127.5 - 1.0 if x.dtype == np.uint8 else x.astype(np.float64)
    background = np.zeros(len(x))
    labels = np.zeros(len(x), np.int32)
    shapes = np.zeros((len(x), 3), np.int32)
    position = np.zeros(len(x), np.int32)
    middle = (geometry.size - 1) / 2
    for i, image in enumerate(binary):
        outside = malformed = False
        found = 0
        square_rows = []
        shape_pixels = np.zeros(image.shape, bool)
        for rows, cols in _components(image, geometry):
            shape_pixels[rows, cols] = True
            strip = geometry.strip_of(cols)
            parts = {int(k): (rows[strip == k], cols[strip == k]) for k in np.unique(strip)}
            parts = {k: part for k, part in parts.items() if part[0].size >= geometry.speck}
            copies = {k: _copies(*part, outlines[k], geometry.areas[k]) for k, part in parts.items()}
            found += bool(parts)
            if len(parts) > 1 and not all(copies.values()):
                outside = True  # a blob across a strip border (not shapes that merely touch there)
                continue
            for k, n in copies.items():
                malformed |= n == 0
                shapes[i, k] += n
                if k == 1:
                    square_rows += [parts[k][0].mean()] * n
        background[i] = float(np.mean(np.abs(level[i][~shape_pixels] + 1.0))) if not shape_pixels.all() else 0.0
        duplicate = bool(np.any(shapes[i] >= 2))
        labels[i] = LABELS.index("blank" if found == 0 else "duplicate" if duplicate else "outside" if outside
                                 else "malformed" if malformed else "valid")
        position[i] = POSITIONS.index("none" if not square_rows else "two" if len(square_rows) >= 2
                                      else "top" if square_rows[0] < middle else "bottom")
    return Counts(labels, shapes, position, background)


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
                                     "blank_share", "well_formed_share", "background_noise")

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
        """The share of samples x [N, size, size, 1] per counter label, well formed (valid or duplicate) and
        per square position, and their mean background noise (:func:`count`'s ``background``)."""
        counts = count(x)
        n = max(len(counts.labels), 1)
        out = {f"{name}_share": float(np.sum(counts.labels == i) / n) for i, name in enumerate(LABELS)}
        out["well_formed_share"] = float(np.sum(counts.well_formed()) / n)
        out["background_noise"] = float(np.mean(counts.background)) if len(counts.labels) else 0.0
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
