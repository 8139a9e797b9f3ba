"""How hard the fuzz-style property tests try.

``.ci/run`` runs them bounded (the counts written in each test); ``nox -s fuzz``
sets ``SANSPROXY_FUZZ_SCALE`` (25 by default there) to run each many times longer.
"""

from __future__ import annotations

import os

__all__ = ["examples"]

_SCALE = max(1, int(os.environ.get("SANSPROXY_FUZZ_SCALE", "1")))


def examples(n: int) -> int:
    """``n`` examples, times the scale the environment asks for."""
    return n * _SCALE
