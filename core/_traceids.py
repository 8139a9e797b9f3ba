"""An exchange's W3C trace context: the client's ``traceparent`` continued, or a
new trace, its ids drawn from the exchange's id and a random number the driver
gave (the core draws none itself)."""

from __future__ import annotations

import hashlib
import struct
from functools import partial
from typing import NamedTuple

__all__ = ["TraceIds", "trace_ids"]


class TraceIds(NamedTuple):
    """An exchange's W3C trace context: ``trace_id`` (32 hex), ``span_id`` (16 hex),
    ``parent_span_id`` (16 hex, or None for a new trace), ``sampled``, and the
    64-bit ``seed`` its attempts' span ids are drawn from."""

    trace_id: str
    span_id: str
    parent_span_id: str | None
    sampled: bool
    seed: int

    def attempt_span_id(self, number: int) -> str:
        """The span id of upstream attempt ``number`` (a CLIENT span): the seed stepped
        by a Weyl sequence (distinct for every attempt, from each other and, but
        once in 2**64, from the exchange's span)."""
        return f"{((self.seed + number * _WEYL) & _MASK64) or 1:016x}"

    def traceparent(self, number: int) -> bytes:
        """The ``traceparent`` header sent with upstream attempt ``number``."""
        flags = "01" if self.sampled else "00"
        return f"00-{self.trace_id}-{self.attempt_span_id(number)}-{flags}".encode("ascii")


_HEX = frozenset("0123456789abcdef")
_WEYL = 0x9E3779B97F4A7C15  # 2**64 / the golden ratio, odd: number -> id is one to one
_MASK64 = (1 << 64) - 1
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16
_PACK_DOUBLE = struct.Struct("<d").pack
_BLAKE2B = hashlib.blake2b(digest_size=32)  # never updated: each exchange hashes a copy
_new_ids = partial(tuple.__new__, TraceIds)


def _parse_traceparent(value: bytes | None) -> tuple[str, str, bool] | None:
    """``(trace_id, parent_id, sampled)`` from a valid W3C ``traceparent``, else None."""
    if value is None or len(value) < 55:
        return None
    try:
        text = value.decode("ascii").strip().lower()
    except UnicodeDecodeError:
        return None
    parts = text.split("-")
    if len(parts) < 4:
        return None
    version, trace_id, parent_id, flags = parts[:4]
    if (
        len(version) != 2
        or version == "ff"
        or len(trace_id) != 32
        or len(parent_id) != 16
        or len(flags) != 2
        or not _HEX.issuperset(version + trace_id + parent_id + flags)
        or trace_id == "0" * 32
        or parent_id == "0" * 16
        or (version == "00" and len(parts) != 4)
    ):
        return None
    return trace_id, parent_id, bool(int(flags, 16) & 1)


def trace_ids(
    traceparent: bytes | None, *, exchange_id: str, rand: float, sample_ratio: float
) -> TraceIds:
    """The trace context of an exchange: the client's ``traceparent`` continued
    (its sampling decision kept), or a new trace sampled at ``sample_ratio``.

    The ids are drawn from the exchange's id and ``rand`` (the core draws no
    random numbers itself), so the same inputs give the same ids.
    """
    hasher = _BLAKE2B.copy()  # cheaper than a new one with its digest size
    hasher.update(exchange_id.encode() + _PACK_DOUBLE(rand))
    digest = hasher.hexdigest()
    span_id = digest[32:48]
    if span_id == _ZERO_SPAN:
        span_id = "0" * 15 + "1"
    seed = int(digest[48:], 16)
    if traceparent is not None:
        parent = _parse_traceparent(traceparent)
        if parent is not None:
            trace_id, parent_id, sampled = parent
            return _new_ids((trace_id, span_id, parent_id, sampled, seed))
    trace_id = digest[:32]
    if trace_id == _ZERO_TRACE:
        trace_id = "0" * 31 + "1"
    # As OpenTelemetry's TraceIdRatioBased: the trace id's low 64 bits against the ratio.
    sampled = sample_ratio >= 1.0 or int(trace_id[16:], 16) < round(sample_ratio * (1 << 64))
    return _new_ids((trace_id, span_id, None, sampled, seed))
