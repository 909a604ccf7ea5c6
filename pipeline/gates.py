"""Comparisons for gates and parity checks that a NaN or an infinity can never pass.

`x <= limit` is False for NaN, but `x > limit` is False too, so a check written as "fail if
over the limit" lets NaN through. Every gate and parity check asks "is it provably within the
limit?" instead, through these.
"""

from __future__ import annotations

import math


def _finite(value: object) -> float | None:
    try:
        f = float(value)  # numpy scalars included
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def at_most(value: object, limit: float) -> bool:
    """True only for a finite value <= limit."""
    f = _finite(value)
    return f is not None and f <= limit


def at_least(value: object, limit: float) -> bool:
    """True only for a finite value >= limit."""
    f = _finite(value)
    return f is not None and f >= limit


def show(value: object, digits: int = 4) -> str:
    """A measured value for a message: 'nan' and 'inf' spelled out, never hidden."""
    f = _finite(value)
    return str(value) if f is None else f"{f:.{digits}g}"
