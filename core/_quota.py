"""Quota values shared by the quota commands and their answers: a limit and one verdict.

The algorithm that keeps them is the rate-limit policy's (``core.policies``); the
stores (memory, Redis) live in the adapters.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

__all__ = ["Decision", "Limit", "Verdict", "finite", "integer"]


def finite(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, not {value!r}")
    return float(value)


def integer(name: str, value: int, *, minimum: int | None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an int, not {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, not {value!r}")
    return value


@dataclass(frozen=True, slots=True, kw_only=True)
class Limit:
    """At most ``limit`` (requests or tokens) in any ``window`` seconds. Don't subclass.

    A bad field raises ``ValueError``, not ``LocalProtocolError`` as events and
    commands do: limits are built from the configuration, whose loading (and the
    limiter, which shares ``finite``/``integer``) reports ``ValueError``.
    """

    limit: int
    window: float = 60.0

    def __post_init__(self) -> None:
        integer("Limit.limit", self.limit, minimum=1)
        window = finite("Limit.window", self.window)
        if window <= 0:
            raise ValueError(f"Limit.window must be > 0, not {self.window!r}")
        object.__setattr__(self, "window", window)


@dataclass(frozen=True, slots=True, kw_only=True)
class Decision:
    """One limit's verdict, in seconds: what ``x-ratelimit-*`` and ``Retry-After`` need.

    ``allowed``: the request was admitted and charged (with ``acquire_all``: by
    every limit, so all its decisions agree). ``remaining``: what is
    left in the window after it, in [0, limit]. ``reset_after``: until all usage
    has left the window. ``retry_after``: 0 when allowed; else the wait after
    which the same request is admitted if nothing else arrives -- ``math.inf``
    when its amount exceeds ``limit`` itself (it never fits), and 0 for a limit
    that had room when another limit of the same request refused it. Don't subclass.
    """

    allowed: bool
    limit: int
    remaining: int
    reset_after: float
    retry_after: float


class Verdict(NamedTuple):
    """One limit's :class:`Decision` but ``allowed`` (the same for all of a request's
    limits), by the same names, built in a third of the time (``MemoryLimiter._quota``)."""

    limit: int
    remaining: int
    reset_after: float
    retry_after: float
