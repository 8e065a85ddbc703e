"""Deterministic canary routing by request key.

A key's **point** is a number in ``[0, 1)`` taken from the first 8 bytes of its BLAKE2b
digest: uniform over keys, the same on every process and machine, for ever (no random
seed, no ``hash()`` randomisation). A key goes to the canary when its point is below the
canary fraction, so:

* the same key always gets the same route (sticky sessions without state);
* raising the fraction only moves keys from the champion to the canary, never back;
* over many keys the canary's share is the fraction (binomial spread).

>>> canary_point("user-42") == canary_point("user-42")
True
>>> 0.0 <= canary_point("user-42") < 1.0
True
>>> route_for("user-42", 0.0), route_for("user-42", 1.0)
('champion', 'canary')
"""

from __future__ import annotations

import hashlib
from typing import Literal

from ct_stream.errors import InputError

__all__ = ["CHAMPION", "CANARY", "Route", "canary_point", "route_for", "threshold"]

Route = Literal["champion", "canary"]
CHAMPION: Route = "champion"
CANARY: Route = "canary"

_SCALE = 2.0 ** 64


def _key_bytes(key: str | bytes) -> bytes:
    if isinstance(key, str):
        return key.encode("utf-8")
    if isinstance(key, (bytes, bytearray, memoryview)):
        return bytes(key)
    raise InputError("key", type(key).__name__, "a str or bytes request key (or None for the champion)")


def _point64(key: str | bytes) -> int:
    return int.from_bytes(hashlib.blake2b(_key_bytes(key), digest_size=8).digest(), "big")


def canary_point(key: str | bytes) -> float:
    """The key's uniform point in ``[0, 1)`` (BLAKE2b, first 8 bytes, big-endian / 2**64)."""
    return _point64(key) / _SCALE


def threshold(fraction: float) -> int:
    """The 64-bit integer bound for ``fraction``: a key is a canary key iff its 64-bit hash
    is below it (``fraction * 2**64``, exact at 0 and 1).

    >>> threshold(0.0), threshold(1.0) == 2 ** 64
    (0, True)
    """
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0.0 <= fraction <= 1.0:
        raise InputError("fraction", fraction, "a number in [0, 1]")
    return 2 ** 64 if fraction >= 1.0 else int(fraction * _SCALE)


def route_for(key: str | bytes, fraction: float) -> Route:
    """``"canary"`` when the key's point is below ``fraction``, else ``"champion"``."""
    return CANARY if _point64(key) < threshold(fraction) else CHAMPION
