"""The built-in price table: USD per million tokens, by upstream model name.

Data only, in one place. The figures are the providers' published standard
rates (``SOURCE``: pricing pages and per-model pages), taken on ``AS_OF``; a
model whose price could not be found there is left out, so its cost is
unknown (absent), never zero. Per-model overrides from the config take
precedence (see :func:`price_for`).

What the table cannot say, and therefore leaves out:

- Anthropic's 1-hour cache writes (2x input) -- ``cache_write`` is the 5-minute
  rate, the default TTL;
- long-context surcharges (Anthropic's Sonnet 4 / 4.5 above 200K input tokens);
- Batch, Flex and Priority tiers, audio and image tokens, tool-call fees.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from types import MappingProxyType

__all__ = ["AS_OF", "PRICES", "SOURCE", "Price", "price_for"]

SOURCE: tuple[str, ...] = (
    "https://platform.openai.com/docs/pricing",
    "https://developers.openai.com/api/docs/pricing",
    "https://developers.openai.com/api/docs/models",
    "https://platform.claude.com/docs/en/about-claude/pricing",
    "https://docs.anthropic.com/en/docs/about-claude/pricing",
    "https://platform.claude.com/docs/en/models/sonnet-4-5/overview",
    "https://platform.claude.com/docs/en/models/sonnet-4-6/overview",
    "https://platform.claude.com/docs/en/models/haiku-4-5/overview",
)
AS_OF = date(2026, 11, 24)  # the day the figures were taken from those pages


@dataclass(frozen=True, slots=True, kw_only=True)
class Price:
    """USD per million tokens. Don't subclass.

    ``cached_input`` prices OpenAI "cached input" and Anthropic cache reads;
    ``cache_write`` prices Anthropic 5-minute cache writes. ``None`` means the
    provider lists no such rate. Each rate must be a finite number >= 0.
    """

    input: float
    output: float
    cached_input: float | None = None
    cache_write: float | None = None

    def __post_init__(self) -> None:
        for name in ("input", "output", "cached_input", "cache_write"):
            value = getattr(self, name)
            if value is None and name in ("cached_input", "cache_write"):
                continue
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not math.isfinite(value)
                or value < 0
            ):
                raise ValueError(f"Price.{name} must be a finite number >= 0, not {value!r}")


def _anthropic(input: float, cache_write: float, cache_read: float, output: float) -> Price:
    """A row of Anthropic's table, in its column order."""
    return Price(input=input, output=output, cached_input=cache_read, cache_write=cache_write)


def _openai(input: float, cached_input: float | None, output: float) -> Price:
    """A row of OpenAI's table, in its column order."""
    return Price(input=input, output=output, cached_input=cached_input)


# Anthropic: base input, 5m cache writes, cache hits and refreshes, output.
# The pricing page's rule: 5m writes are 1.25x and reads 0.1x the base input
# (Haiku 3's row is rounded to the cent). Sonnet 4.5 / 4.6 and Haiku 4.5 take
# their input and output rates from their model pages and the rule.
_OPUS_4 = _anthropic(15, 18.75, 1.50, 75)
_OPUS_4_5 = _anthropic(5, 6.25, 0.50, 25)
_SONNET = _anthropic(3, 3.75, 0.30, 15)
_HAIKU_4_5 = _anthropic(1, 1.25, 0.10, 5)
_HAIKU_3_5 = _anthropic(0.80, 1, 0.08, 4)
_HAIKU_3 = _anthropic(0.25, 0.30, 0.03, 1.25)

PRICES: Mapping[str, Price] = MappingProxyType(
    {
        # --- OpenAI: input, cached input, output ---------------------------------
        "gpt-4o": _openai(2.50, 1.25, 10.00),
        "gpt-4o-2024-05-13": _openai(5.00, None, 15.00),  # the first snapshot, dearer
        "gpt-4o-mini": _openai(0.15, 0.075, 0.60),
        "gpt-4.1": _openai(2.00, 0.50, 8.00),
        "gpt-4.1-mini": _openai(0.40, 0.10, 1.60),
        "gpt-4.1-nano": _openai(0.10, 0.025, 0.40),
        "gpt-5": _openai(1.25, 0.125, 10.00),
        "gpt-5-mini": _openai(0.25, 0.025, 2.00),
        "gpt-5-nano": _openai(0.05, 0.005, 0.40),
        "o1": _openai(15.00, 7.50, 60.00),
        "o3": _openai(2.00, 0.50, 8.00),
        "o3-mini": _openai(1.10, 0.55, 4.40),
        "o4-mini": _openai(1.10, 0.275, 4.40),
        # Embeddings bill input only; they produce no output tokens.
        "text-embedding-3-small": _openai(0.02, None, 0),
        "text-embedding-3-large": _openai(0.13, None, 0),
        # --- Anthropic (aliases listed with their model) --------------------------
        "claude-opus-4-6": _OPUS_4_5,
        "claude-opus-4-5": _OPUS_4_5,
        "claude-opus-4-1": _OPUS_4,
        "claude-opus-4": _OPUS_4,
        "claude-opus-4-0": _OPUS_4,
        "claude-sonnet-4-6": _SONNET,
        "claude-sonnet-4-5": _SONNET,
        "claude-sonnet-4": _SONNET,
        "claude-sonnet-4-0": _SONNET,
        "claude-3-7-sonnet": _SONNET,
        "claude-3-7-sonnet-latest": _SONNET,
        "claude-haiku-4-5": _HAIKU_4_5,
        "claude-3-5-haiku": _HAIKU_3_5,
        "claude-3-5-haiku-latest": _HAIKU_3_5,
        "claude-3-haiku": _HAIKU_3,
    }
)

# A trailing snapshot: OpenAI's "-2024-08-06" or "-0613", Anthropic's
# "-20250929", Vertex AI's "@20250929".
_SNAPSHOT = re.compile(r"(?:-20\d\d-\d\d-\d\d|-20\d{6}|-\d{4}|@20\d{6})\Z")


def price_for(model: str, overrides: Mapping[str, Price] | None = None) -> Price | None:
    """The price of ``model``, or ``None`` when it is unknown.

    Looks up, in order: the override for the name, the override for the name
    without its trailing snapshot suffix, the built-in table for the name,
    then for the name without the suffix ("gpt-4o-2024-08-06" -> "gpt-4o",
    "claude-sonnet-4-5-20250929" -> "claude-sonnet-4-5"). An override always
    beats the built-in table; an exact name beats its base name.
    """
    base = _SNAPSHOT.sub("", model)
    names = (model,) if base == model else (model, base)
    for table in (overrides, PRICES):
        if table:
            for name in names:
                price = table.get(name)
                if price is not None:
                    return price
    return None
