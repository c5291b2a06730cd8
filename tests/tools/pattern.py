"""Deterministic test payloads: the same bytes for the same length, on both ends."""
import functools, random


@functools.lru_cache(maxsize=4)
def pattern(n):
    return random.Random(n).randbytes(n)
