"""Deterministic test payloads: the same bytes for the same length, on both ends."""
import functools, random

_CHUNK = 8 << 20


@functools.lru_cache(maxsize=4)
def pattern(n):
    # randbytes() overflows past 2**31 bits, so large payloads are built from chunks, each
    # with its own seed (no repeats that could hide a misplaced chunk).
    return b"".join(random.Random(n * 1_000_003 + i).randbytes(min(_CHUNK, n - off))
                    for i, off in enumerate(range(0, n, _CHUNK)))
