"""Read-noise draws keyed by (seed, sample, layer, tile, image, element).

Image ``i``'s draws for one tile are the ``i mod BLOCK``-th slice of the standard normals of
the keyed stream ``(TAG, sample, layer, tile, i // BLOCK)`` (``ftaudit.draws``, under the
run's ``rng``); weight read noise uses the same keys under its own first word ``WEIGHT_TAG``,
so turning it on leaves the output read noise's draws as they are. Any batch of images is cut
from the same blocks, so the numbers never depend on the batch size, the worker count or the
backend (every backend feeds these arrays).
"""

from __future__ import annotations

import numpy as np

from ftaudit.draws import DEFAULT_RNG, normals, standard_normal

#: images per generator block (one SeedSequence per block keeps set-up cost negligible)
BLOCK = 64
#: first spawn-key word, so read-noise streams never meet the weight draws' (sample, layer)
TAG = 0x5EAD
#: first spawn-key word of the weight read noise's streams
WEIGHT_TAG = 0x3EAD


def read_noise_block(
    seed: int,
    sample: int,
    layer: int,
    tile: int,
    block: int,
    shape: tuple[int, ...],
    tag: int = TAG,
    rng: str = DEFAULT_RNG,
) -> np.ndarray:
    """Draws of the BLOCK images of one block, shape (BLOCK, *shape), float32."""
    return normals(seed, (tag, sample, layer, tile, block), (BLOCK, *shape), rng)


def read_noise(
    seed: int,
    sample: int,
    layer: int,
    tile: int,
    start: int,
    stop: int,
    shape: tuple[int, ...],
    out: np.ndarray | None = None,
    tag: int = TAG,
    rng: str = DEFAULT_RNG,
) -> np.ndarray:
    """Standard-normal draws for images [start, stop) of one tile, shape (stop - start, *shape);
    ``tag`` picks the stream (``TAG`` output read noise, ``WEIGHT_TAG`` weight read noise)."""
    if out is None:
        out = np.empty((stop - start, *shape), np.float32)
    for block in range(start // BLOCK, (stop - 1) // BLOCK + 1 if stop > start else 0):
        lo, hi = max(start, block * BLOCK), min(stop, (block + 1) * BLOCK)
        target = out[lo - start : hi - start]
        if lo == block * BLOCK:  # a prefix of the block's stream: drawn in place, no copy
            standard_normal(seed, (tag, sample, layer, tile, block), target, rng)
        else:
            draws = read_noise_block(seed, sample, layer, tile, block, shape, tag, rng)
            target[...] = draws[lo - block * BLOCK : hi - block * BLOCK]
    return out
