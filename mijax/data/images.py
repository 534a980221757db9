"""Grey images in their two forms: uint8 ``[M, H, W]`` (0 black .. 255 white), as the image data sets
(:mod:`mijax.data.shapes`, :mod:`mijax.data.digits`) keep them, and float32 ``[M, H, W, 1]`` in [-1, 1], as
models and the feature classifier (:mod:`mijax.features`) take them. 0 maps to exactly -1 and 255 to 1."""
from __future__ import annotations

import numpy as np


def to_model(images: np.ndarray) -> np.ndarray:
    """uint8 [M, H, W] (0..255) -> float32 [M, H, W, 1] in [-1, 1]."""
    return ((np.asarray(images, np.float32) - 127.5) / 127.5)[..., None]


def to_uint8(x) -> np.ndarray:
    """Model images [M, H, W, 1] in [-1, 1] (clipped) -> uint8 [M, H, W]."""
    x = np.clip(np.asarray(x, np.float32)[..., 0], -1.0, 1.0)
    return np.rint((x + 1.0) * 127.5).astype(np.uint8)


__all__ = ["to_model", "to_uint8"]
