"""What every configuration section shares: unknown keys refused, defaults validated, and the
one message for a name a registry does not hold."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


def registered(value: str, names, what: str) -> str:
    """`value` if a registry holds it, else an error listing what is: 'a', 'b', 'c'."""
    if value not in names:
        allowed = ", ".join(repr(n) for n in sorted(names))
        raise ValueError(f"unknown {what} {value!r}; allowed: {allowed}")
    return value


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)
