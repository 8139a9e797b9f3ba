"""Token usage: read it from OpenAI and Anthropic responses and streams, and price it.

Extraction never raises: a response is the upstream's data, and a usage field
of the wrong type, missing or negative is simply absent. Counts are split the
way providers bill them -- uncached input, cache reads, cache writes, output --
so that :func:`cost_usd` can price each at its own rate.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from .._json import MAX_JSON_ITEMS, JSONError, loads
from .._sse import parse_block
from ._prices import Price

__all__ = [
    "StreamUsage",
    "Usage",
    "cost_usd",
    "delta_tokens",
    "has_usage_value",
    "merge_usage",
    "usage_from_anthropic",
    "usage_from_openai",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class Usage:
    """Tokens of one exchange, each counted once. Don't subclass.

    ``input_tokens`` are the prompt tokens billed at the full input rate;
    ``cached_input_tokens`` were read from a prompt cache (OpenAI cached
    tokens, Anthropic cache reads); ``cache_creation_tokens`` were written to
    Anthropic's cache. Every count is an ``int`` >= 0.
    """

    input_tokens: int
    output_tokens: int
    cached_input_tokens: int = 0
    cache_creation_tokens: int = 0

    def __post_init__(self) -> None:
        a, b, c, d = (
            self.input_tokens,
            self.output_tokens,
            self.cached_input_tokens,
            self.cache_creation_tokens,
        )
        if (
            type(a) is int
            and type(b) is int
            and type(c) is int
            and type(d) is int
            and a >= 0
            and b >= 0
            and c >= 0
            and d >= 0
        ):
            return
        for name in (
            "input_tokens",
            "output_tokens",
            "cached_input_tokens",
            "cache_creation_tokens",
        ):
            value = getattr(self, name)
            if type(value) is not int or value < 0:
                raise ValueError(f"Usage.{name} must be an int >= 0, not {value!r}")

    @property
    def prompt_tokens(self) -> int:
        """All prompt tokens: uncached, cache reads and cache writes."""
        return self.input_tokens + self.cached_input_tokens + self.cache_creation_tokens


def _count(obj: Mapping[str, Any], key: str) -> int | None:
    value = obj.get(key)
    return value if type(value) is int and value >= 0 else None


def _usage_object(obj: object, outer: str) -> Mapping[str, Any] | None:
    """``obj["usage"]``, else ``obj[outer]["usage"]``, if it is a mapping."""
    # ``type(x) is dict`` first: what loads() gives; the ABC's isinstance is slow.
    if type(obj) is not dict and not isinstance(obj, Mapping):
        return None
    usage = obj.get("usage")
    if usage is None:
        inner = obj.get(outer)
        if type(inner) is dict or isinstance(inner, Mapping):
            usage = inner.get("usage")
    return usage if type(usage) is dict or isinstance(usage, Mapping) else None


def usage_from_openai(obj: Mapping[str, Any]) -> Usage | None:
    """The usage of an OpenAI response object, or ``None`` if it carries none.

    Takes a ``chat.completion``, ``text_completion``, embeddings list,
    ``chat.completion.chunk`` (the usage-only one), a Responses API
    ``response`` or its ``response.completed`` stream event. Chat style:
    ``prompt_tokens``, ``completion_tokens``, ``prompt_tokens_details.cached_tokens``;
    Responses style: ``input_tokens``, ``output_tokens``,
    ``input_tokens_details.cached_tokens``. The prompt count includes the
    cached tokens, which are split out (and capped at the prompt count).
    """
    usage = _usage_object(obj, "response")
    if usage is None:
        return None
    prompt = _count(usage, "prompt_tokens")
    output = _count(usage, "completion_tokens")
    details = usage.get("prompt_tokens_details")
    if prompt is None and output is None:
        prompt = _count(usage, "input_tokens")
        output = _count(usage, "output_tokens")
        details = usage.get("input_tokens_details")
        if prompt is None and output is None:
            return None
    prompt = prompt or 0
    cached = (
        _count(details, "cached_tokens")
        if details is not None and (type(details) is dict or isinstance(details, Mapping))
        else None
    )
    cached = min(cached or 0, prompt)
    return Usage(
        input_tokens=prompt - cached, output_tokens=output or 0, cached_input_tokens=cached
    )


def usage_from_anthropic(obj: Mapping[str, Any]) -> Usage | None:
    """The usage of an Anthropic message or stream event, or ``None`` if it carries none.

    Takes a ``message`` (``usage``), a ``message_start`` event
    (``message.usage``) or a ``message_delta`` event (``usage``, cumulative
    counts). Reads ``input_tokens`` (already uncached), ``output_tokens``,
    ``cache_read_input_tokens`` and ``cache_creation_input_tokens``.
    """
    usage = _usage_object(obj, "message")
    if usage is None:
        return None
    counts = (
        _count(usage, "input_tokens"),
        _count(usage, "output_tokens"),
        _count(usage, "cache_read_input_tokens"),
        _count(usage, "cache_creation_input_tokens"),
    )
    if counts == (None, None, None, None):
        return None
    input_, output, read, created = (c or 0 for c in counts)
    return Usage(
        input_tokens=input_,
        output_tokens=output,
        cached_input_tokens=read,
        cache_creation_tokens=created,
    )


def merge_usage(a: Usage | None, b: Usage | None) -> Usage | None:
    """``a`` updated by the later ``b``: each count of ``b`` wins where it is nonzero.

    For Anthropic streams, whose ``message_start`` carries the input counts and
    whose ``message_delta`` carries the cumulative output count. A count of 0
    cannot be told from an absent one, so it never erases an earlier count.
    """
    if a is None:
        return b
    if b is None:
        return a
    return Usage(
        input_tokens=b.input_tokens or a.input_tokens,
        output_tokens=b.output_tokens or a.output_tokens,
        cached_input_tokens=b.cached_input_tokens or a.cached_input_tokens,
        cache_creation_tokens=b.cache_creation_tokens or a.cache_creation_tokens,
    )


def cost_usd(usage: Usage, price: Price | None) -> float | None:
    """What ``usage`` costs at ``price``, in USD; ``None`` when the price is unknown.

    Cache reads are billed at ``price.cached_input`` and cache writes at
    ``price.cache_write``; a rate the price does not list falls back to the
    input rate (the provider then bills those tokens as plain input).
    """
    if price is None:
        return None
    rate_in = price.input
    rate_read = rate_in if price.cached_input is None else price.cached_input
    rate_write = rate_in if price.cache_write is None else price.cache_write
    total = (
        usage.input_tokens * rate_in
        + usage.cached_input_tokens * rate_read
        + usage.cache_creation_tokens * rate_write
        + usage.output_tokens * price.output
    )
    return total / 1_000_000


_USAGE_KEY = b'"usage"'
_COMPACT_NULL = b":null"
_WHITESPACE = b" \t\r\n"
_COLON = 58  # ord(":")


def has_usage_value(block: bytes) -> bool:
    """Whether some ``"usage"`` key in the block has a value other than ``null``.

    A ``"usage"`` not followed by a colon is a string value, not a key (a
    quote inside a JSON string is always escaped). Searches from the end:
    OpenAI puts ``"usage":null`` last in every chunk of an ``include_usage``
    stream, and a search that succeeds at once is the cheap part.
    """
    n = len(block)
    i = block.rfind(_USAGE_KEY)
    while i >= 0:
        j = i + len(_USAGE_KEY)
        if not block.startswith(_COMPACT_NULL, j):
            while j < n and block[j] in _WHITESPACE:
                j += 1
            if j < n and block[j] == _COLON:
                j += 1
                while j < n and block[j] in _WHITESPACE:
                    j += 1
                if not block.startswith(b"null", j):
                    return True
        i = block.rfind(_USAGE_KEY, 0, i)
    return False


def _may_carry_anthropic_usage(block: bytes) -> bool:
    """Whether the block may be a ``message_start`` or ``message_delta`` event."""
    if block.startswith(b"event: "):  # Anthropic names every event; the usual case
        return block.startswith((b"event: message_start\n", b"event: message_delta\n"))
    return b"message_start" in block or b"message_delta" in block


def _json_object(block: bytes, max_items: int) -> Any:
    data = parse_block(block).data
    try:
        return loads(data, max_items=max_items)
    except JSONError:  # not JSON (or too much of it): no usage to read
        return None


class StreamUsage:
    """Follow the usage of one SSE stream, block by block.

    Feed it every block of the upstream stream, as :meth:`SSEDecoder.feed`
    returns them; ``usage`` holds the usage seen so far (``None`` before any).
    With ``api="openai"`` (chat completion chunks or Responses API events) the
    latest usage-bearing event wins; with ``api="anthropic"`` the
    ``message_start`` and ``message_delta`` usages are merged
    (:func:`merge_usage`). Only blocks that can carry usage are parsed: OpenAI
    blocks with a non-null ``"usage"`` value, Anthropic ``message_start`` and
    ``message_delta`` events. Never raises on bad data.

    ``final`` tells whether the stream's closing usage arrived (OpenAI's
    usage chunk or ``response.completed``, Anthropic's ``message_delta``);
    ``delta_tokens`` estimates the output tokens of the content deltas fed so
    far, for a stream that ends without it (see :meth:`settle`).
    """

    __slots__ = (
        "_anthropic",
        "_max_items",
        "delta_tokens",
        "final",
        "finish_reasons",
        "observed",
        "response_id",
        "response_model",
        "texts",
        "usage",
    )

    def __init__(
        self, api: Literal["openai", "anthropic"], *, max_json_items: int = MAX_JSON_ITEMS
    ) -> None:
        if api not in ("openai", "anthropic"):
            raise ValueError(f"api must be 'openai' or 'anthropic', not {api!r}")
        self._anthropic = api == "anthropic"
        self._max_items = max_json_items
        self.usage: Usage | None = None
        self.final = False
        self.delta_tokens = 0
        #: What the events parsed for their usage said of the response (for observers).
        self.response_id: str | None = None
        self.response_model: str | None = None
        self.finish_reasons: list[str] = []
        #: Whether to look for finish reasons in the events it does not parse (observers).
        self.observed = False
        #: The generated text's pieces (JSON string bodies), when a list is given to keep them.
        self.texts: list[bytes] | None = None

    def feed(self, block: bytes) -> bool:
        """Take the next block of the stream; True if it is OpenAI's usage-only chunk
        (``"choices": []`` and a usage: what ``include_usage`` adds to a stream)."""
        start = block.find(_DELTA)  # the text fields come after it
        if start >= 0:
            self.delta_tokens += delta_tokens(block, start)
            if self.texts is not None and len(block) <= _SCANNED:
                self.texts.extend(_DELTA_TEXT.findall(block, start))
        if self._anthropic:
            if _may_carry_anthropic_usage(block):
                event = _json_object(block, self._max_items)
                usage = usage_from_anthropic(event)
                self.usage = merge_usage(self.usage, usage)
                if isinstance(event, dict):
                    self._note_anthropic(event)
                if usage is not None and event.get("type") == "message_delta":
                    self.final = True
            return False
        if self.observed and _FINISH in block:
            self.finish_reasons.extend(
                reason.decode("utf-8", "replace") for reason in _FINISH_REASON.findall(block)
            )
        if not has_usage_value(block):
            return False
        event = _json_object(block, self._max_items)
        usage = usage_from_openai(event)
        if usage is not None:
            self.usage = usage
            self.final = True
            self._note_openai(event)
        return (
            start < 0
            and type(event) is dict
            and event.get("choices") == []
            and bool(event.get("usage"))
        )

    def _note_openai(self, event: Mapping[str, Any]) -> None:
        response = event.get("response")  # the Responses API's response.completed
        source = response if isinstance(response, dict) else event
        identity, model = source.get("id"), source.get("model")
        if isinstance(identity, str):
            self.response_id = identity
        if isinstance(model, str):
            self.response_model = model

    def _note_anthropic(self, event: Mapping[str, Any]) -> None:
        message = event.get("message")
        if isinstance(message, dict):  # message_start
            identity, model = message.get("id"), message.get("model")
            if isinstance(identity, str):
                self.response_id = identity
            if isinstance(model, str):
                self.response_model = model
        delta = event.get("delta")
        if isinstance(delta, dict) and isinstance(delta.get("stop_reason"), str):
            self.finish_reasons.append(delta["stop_reason"])

    def settle(self, input_estimate: int) -> tuple[Usage, bool]:
        """The stream's usage when it is over, and whether it is an estimate.

        The closing usage the upstream reported is exact. Without it (the
        client left, the upstream failed, or it reports none), the usage is
        estimated: the input counts the stream reported, else
        ``input_estimate``; as output, the larger of the count it reported and
        :attr:`delta_tokens`.
        """
        usage = self.usage
        if usage is not None and self.final:
            return usage, False
        if usage is None:
            usage = Usage(input_tokens=0, output_tokens=0)
        estimate = Usage(
            input_tokens=usage.input_tokens if usage.prompt_tokens else input_estimate,
            output_tokens=max(usage.output_tokens, self.delta_tokens),
            cached_input_tokens=usage.cached_input_tokens,
            cache_creation_tokens=usage.cache_creation_tokens,
        )
        return estimate, True


_DELTA = b'"delta"'
_FINISH = b'"finish_reason":"'
_FINISH_REASON = re.compile(rb'"finish_reason":"([a-z_]{1,40})"')
# The string fields of a stream delta that carry generated text or arguments.
# (The string's body is written unrolled, "normal* (escape normal*)*": a third
# faster than "(?:[^"\\]|\\.)*", which steps into a group for every byte.)
_DELTA_TEXT = re.compile(
    rb'"(?:content|text|arguments|partial_json|thinking|refusal)"\s*:\s*"([^"\\]*(?:\\.[^"\\]*)*)"'
)


def delta_tokens(block: bytes, start: int = 0) -> int:
    """An estimate of the output tokens one stream delta event carries.

    About four characters a token, at least one for a delta with any text
    (providers stream a token or a few per event); 0 for a delta without text
    (a role, a finish reason). Reads the bytes from ``start`` (where
    ``"delta"`` is); never parses the JSON.
    """
    if len(block) > _SCANNED:
        # A huge event is almost all text: no regex over megabytes on the loop.
        return len(block) // 4
    texts = _DELTA_TEXT.findall(block, start)
    if not texts:
        return 0
    chars = len(texts[0]) if len(texts) == 1 else sum(map(len, texts))
    return (chars + 2) // 4 or 1 if chars else 0


_SCANNED = 8192  # bytes of an event the estimate reads field by field
