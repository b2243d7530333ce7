"""Keyed random draws: the one home of every Monte Carlo random stream.

A stream is an SFC64 generator seeded by ``SeedSequence(seed, spawn_key=key)``; the key says
whose draws they are (``(sample, layer)`` for programming noise, ``(sample, layer, stream)`` for
drift and stuck cells, ``(TAG, sample, layer, tile, block)`` for read noise, ...), so a draw
depends on nothing but its key: not the batch size, the worker count nor the order of work.

Standard normals come from one of two generators over the same keyed bit stream (``RNGS``):

- ``fast`` (the default): Box-Muller on float32, vectorised in cache-sized chunks. Word j of the
  stream (64 bits) gives normals 2j and 2j+1: the high 32 bits ``h`` give the radius
  ``r = sqrt(-2 ln u)`` with ``u = (h + 1) / 2**32`` in (0, 1], the low 32 bits the angle
  ``2 pi l / 2**32``; ``z = (r cos, r sin)``. The radius is exact in the tail: P(r > t) is
  exp(-t**2 / 2) to within 2**-32 for every t and the angle is uniform to 32 bits, so normal
  tail frequencies are right to well past 6 sigma; the largest possible |z| is
  sqrt(64 ln 2) = 6.66 (a normal exceeds it with probability 2.7e-11). Near 0 the float32
  rounding of u leaves radii below 3.5e-4 (probability 6e-8) unresolved. About 3x faster
  than numpy's float32 ziggurat.
- ``ziggurat``: numpy's ``Generator.standard_normal(dtype=float32)``, ftaudit's generator before
  ``fast`` became the default; it reproduces earlier reports bit for bit.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence

import numpy as np

#: name -> what it is (the --rng help text)
RNGS = {
    "fast": "vectorised float32 Box-Muller over the keyed SFC64 stream (default)",
    "ziggurat": "numpy's float32 ziggurat over the same stream (reproduces earlier reports)",
}
DEFAULT_RNG = "fast"

#: words (normal pairs) per vectorised step: 64 KB per working array, so they stay in the L2
#: cache while the per-step overhead of a dozen numpy calls stays small (measured: 2048 words
#: cost 1.6x the time per normal of 16384)
CHUNK_WORDS = 16384

_TWO_PI_OVER_2_32 = np.float32(2 * np.pi / 2.0**32)
_INV_2_32 = np.float32(2.0**-32)


def check_rng(rng: str) -> str:
    """``rng`` if it names a generator, else UserError with a suggestion."""
    if rng in RNGS:
        return rng
    from ftaudit.errors import UserError

    close = difflib.get_close_matches(str(rng), list(RNGS), n=1)
    suggestion = f"did you mean '{close[0]}'? " if close else ""
    raise UserError(
        f"unknown random generator --rng '{rng}'",
        hint=f"{suggestion}use --rng {' or '.join(RNGS)}",
    )


def keyed_generator(seed: int, key: Sequence[int]) -> np.random.Generator:
    """The SFC64 generator of stream ``key`` (``SeedSequence(seed, spawn_key=key)``)."""
    return np.random.Generator(np.random.SFC64(np.random.SeedSequence(seed, spawn_key=tuple(key))))


def standard_normal(
    seed: int, key: Sequence[int], out: np.ndarray, rng: str = DEFAULT_RNG
) -> np.ndarray:
    """Fill the C-contiguous float32 array ``out`` with the first ``out.size`` standard normals
    of stream ``key`` under generator ``rng``; returns ``out``. A shorter ``out`` gets a prefix
    of a longer one's numbers."""
    if not (out.flags.c_contiguous and out.dtype == np.float32):
        # a reshaped copy would take the draws and leave ``out`` as it was
        raise ValueError("standard_normal fills C-contiguous float32 arrays only")
    generator = keyed_generator(seed, key)
    if rng == "ziggurat":
        generator.standard_normal(dtype=np.float32, out=out)
    elif rng == "fast":
        box_muller(generator.bit_generator, out.reshape(-1))
    else:
        check_rng(rng)
    return out


def normals(
    seed: int, key: Sequence[int], shape: tuple[int, ...], rng: str = DEFAULT_RNG
) -> np.ndarray:
    """A new float32 array of ``shape`` holding stream ``key``'s first standard normals."""
    return standard_normal(seed, key, np.empty(shape, np.float32), rng)


def box_muller(
    bit_generator: np.random.BitGenerator, flat: np.ndarray, chunk_words: int = CHUNK_WORDS
) -> np.ndarray:
    """The ``fast`` normals into the 1-d float32 array ``flat`` (see the module docstring);
    ``chunk_words`` only sets the working-set size, never the numbers."""
    total = (flat.size + 1) // 2
    size = min(chunk_words, total)
    radius, angle, trig = (np.empty(size, np.float32) for _ in range(3))
    for first in range(0, total, chunk_words):
        words = min(chunk_words, total - first)
        halves = bit_generator.random_raw(words).view(np.uint32).reshape(words, 2)
        r, a, t = radius[:words], angle[:words], trig[:words]
        # little-endian: column 1 is the high half (radius), column 0 the low half (angle)
        np.copyto(r, halves[:, 1], casting="unsafe")
        np.add(r, np.float32(1), out=r)
        np.multiply(r, _INV_2_32, out=r)
        np.log(r, out=r)
        np.multiply(r, np.float32(-2), out=r)
        np.sqrt(r, out=r)
        np.copyto(a, halves[:, 0], casting="unsafe")
        np.multiply(a, _TWO_PI_OVER_2_32, out=a)
        pairs = flat[2 * first : 2 * (first + words)]
        np.cos(a, out=t)
        np.multiply(r, t, out=pairs[0::2])
        sines = pairs[1::2]  # one fewer than words when n is odd and this is the last chunk
        k = sines.size
        np.sin(a[:k], out=t[:k])
        np.multiply(r[:k], t[:k], out=sines)
    return flat
