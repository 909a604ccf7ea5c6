"""Numbers for people: percentages, thousands separators, milliseconds, sizes, speed-ups, and
"not measurable" where a difference is inside the measurement's own noise."""

from __future__ import annotations

import math

NOT_MEASURABLE = "not measurable"


def _bad(x: object) -> bool:
    return x is None or (isinstance(x, float) and not math.isfinite(x))


def pct(x: float | None, digits: int = 2) -> str:
    return "n/a" if _bad(x) else f"{100 * x:.{digits}f}%"


def count(n: int | float | None) -> str:
    return "n/a" if _bad(n) else f"{int(round(n)):,}"


def ms(x: float | None) -> str:
    if _bad(x):
        return "n/a"
    return f"{x:.3f}" if x < 10 else f"{x:.1f}"


def per_s(x: float | None) -> str:
    return "n/a" if _bad(x) else f"{x:,.0f}"


def size(n: int | None) -> str:
    if _bad(n):
        return "n/a"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n} B"


def speedup(ref: float | None, x: float | None) -> str:
    """How many times faster `x` is than `ref` (both durations)."""
    if _bad(ref) or _bad(x) or not x:
        return "n/a"
    return f"{ref / x:.2f}x"


def splits(sizes: dict[str, int]) -> str:
    """{'train': 1295, 'val': 143, 'test': 359} -> '1,295 train / 143 val / 359 test'."""
    return " / ".join(f"{count(n)} {name}" for name, n in sizes.items())


def latency_saving(before: dict, after: dict) -> str:
    """p50 saving between two latency measurements, or 'not measurable' when the difference
    is smaller than either measurement's own spread (p90 - p50)."""
    diff = before["p50"] - after["p50"]
    noise = max(before["p90"] - before["p50"], after["p90"] - after["p50"])
    if abs(diff) <= noise:
        return NOT_MEASURABLE
    return f"{ms(diff)} ({diff / before['p50']:.0%})"
