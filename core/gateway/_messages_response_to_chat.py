"""What comes back, Anthropic -> OpenAI: a Messages answer, error or stream as Chat Completions.

The other half of :mod:`._chat_request_to_messages`: an OpenAI client sent a
chat request, an Anthropic upstream answered. Pure functions and one
incremental stream translator, no I/O:

- :func:`messages_response_to_chat` -- an Anthropic ``message`` to a ``chat.completion``;
- :func:`anthropic_error_to_openai` -- an Anthropic error body to OpenAI's error shape
  (the status stays);
- :class:`MessagesStreamToChat` -- Anthropic stream events to ``chat.completion.chunk``
  events ending in ``data: [DONE]``.

The wire formats follow the providers' references: Anthropic's message
object, streaming events and error shapes; OpenAI's chat completion object and
chunk. Every error shape comes from :mod:`core._render`, every JSON from
``core._json.dumps``.

Refused: an answer or event that is not the Anthropic Messages API raises
``RemoteProtocolError`` (502, ``upstream_protocol_error``). Left out:
Anthropic ``thinking`` and ``redacted_thinking`` blocks (and their
``thinking_delta``/``signature_delta`` deltas), which have no place in a chat
completion, ``citations_delta`` deltas, and block or event types this module
does not know (Anthropic's versioning policy says new ones may appear and
should be ignored). Text blocks are joined with no separator, in the stream as
in the whole response.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .._errors import NetworkError, RemoteProtocolError
from .._json import MAX_JSON_ITEMS, JSONError, dumps, loads
from .._render import openai_error_body, openai_error_event
from .._sse import parse_block

__all__ = ["MessagesStreamToChat", "anthropic_error_to_openai", "messages_response_to_chat"]

# --- errors ------------------------------------------------------------------


def _upstream(message: str) -> RemoteProtocolError:
    """The upstream sent something that is not the Anthropic Messages API."""
    return NetworkError(f"malformed Anthropic response: {message}", code="upstream_protocol_error")


# --- response: Anthropic message -> OpenAI chat completion --------------------

_FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
    "pause_turn": "stop",
}


def _finish_reason(stop_reason: object) -> str:
    """OpenAI's finish_reason; an unknown or absent stop reason reads as "stop"."""
    if isinstance(stop_reason, str):
        return _FINISH_REASONS.get(stop_reason, "stop")
    return "stop"


def _count(usage: Mapping[str, Any], key: str) -> int:
    value = usage.get(key)
    if value is None:
        return 0
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise _upstream(f"usage.{key} must be a non-negative integer")
    return value


def _openai_usage(usage: Mapping[str, Any]) -> dict[str, Any]:
    """OpenAI's usage object for Anthropic usage counts (cached input is part of the prompt)."""
    cached = _count(usage, "cache_read_input_tokens")
    written = _count(usage, "cache_creation_input_tokens")
    prompt = _count(usage, "input_tokens") + cached + written
    completion = _count(usage, "output_tokens")
    out: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached, "cache_write_tokens": written},
    }
    details = usage.get("output_tokens_details")
    if isinstance(details, Mapping) and details.get("thinking_tokens") is not None:
        out["completion_tokens_details"] = {"reasoning_tokens": _count(details, "thinking_tokens")}
    return out


_USAGE_KEYS = (
    "input_tokens",
    "output_tokens",
    "cache_read_input_tokens",
    "cache_creation_input_tokens",
)


def _native_usage(usage: Mapping[str, Any]) -> dict[str, int]:
    """Anthropic's four counts, validated, absent ones as 0."""
    return {key: _count(usage, key) for key in _USAGE_KEYS}


def messages_response_to_chat(
    body: Mapping[str, Any], *, model: str, created: int, completion_id: str | None = None
) -> dict[str, Any]:
    """Translate an Anthropic ``message`` into an OpenAI ``chat.completion``.

    ``model`` is the name the client asked for; ``completion_id`` defaults to the
    Anthropic message id. A body that is not a message raises
    ``RemoteProtocolError`` (502, ``upstream_protocol_error``).
    """
    if not isinstance(body, Mapping):
        raise _upstream("a message must be a JSON object")
    content = body.get("content")
    usage = body.get("usage")
    if not isinstance(content, list) or not isinstance(usage, Mapping):
        raise _upstream("a message needs a 'content' list and a 'usage' object")
    if completion_id is None:
        completion_id = body.get("id")
        if not isinstance(completion_id, str):
            raise _upstream("a message needs a string 'id'")
    texts: list[str] = []
    tool_calls: list[dict[str, Any]] = []
    for block in content:
        if not isinstance(block, Mapping):
            raise _upstream("content blocks must be objects")
        kind = block.get("type")
        if kind == "text":
            text = block.get("text")
            if not isinstance(text, str):
                raise _upstream("a text block needs a string 'text'")
            texts.append(text)
        elif kind == "tool_use":
            call_id, name, tool_input = block.get("id"), block.get("name"), block.get("input")
            if (
                not isinstance(call_id, str)
                or not isinstance(name, str)
                or not isinstance(tool_input, Mapping)
            ):
                raise _upstream("a tool_use block needs string 'id' and 'name' and an 'input'")
            arguments = dumps(tool_input).decode()
            tool_calls.append(
                {
                    "id": call_id,
                    "type": "function",
                    "function": {"name": name, "arguments": arguments},
                }
            )
        # thinking, redacted_thinking and unknown block types: left out (module docstring).
    message: dict[str, Any] = {
        "role": "assistant",
        "content": "".join(texts) if texts or not tool_calls else None,
        "refusal": None,
        "annotations": [],
    }
    if tool_calls:
        message["tool_calls"] = tool_calls
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": _finish_reason(body.get("stop_reason")),
            }
        ],
        "usage": _openai_usage(usage),
        "system_fingerprint": None,
    }


# --- errors: Anthropic -> OpenAI ----------------------------------------------

# Anthropic error type -> OpenAI (type, code). OpenAI's own 401 is an
# invalid_request_error with code invalid_api_key, its quota error is
# insufficient_quota; server-side failures are server_error.
_ERROR_TYPES: dict[str, tuple[str, str | None]] = {
    "invalid_request_error": ("invalid_request_error", None),
    "request_too_large": ("invalid_request_error", "request_too_large"),
    "authentication_error": ("invalid_request_error", "invalid_api_key"),
    "permission_error": ("invalid_request_error", "permission_denied"),
    "not_found_error": ("invalid_request_error", "not_found"),
    "conflict_error": ("invalid_request_error", "conflict"),
    "billing_error": ("insufficient_quota", "insufficient_quota"),
    "rate_limit_error": ("rate_limit_error", "rate_limit_exceeded"),
    "timeout_error": ("server_error", "timeout"),
    "api_error": ("server_error", None),
    "overloaded_error": ("server_error", "overloaded"),
}


def _error_kind(anthropic_type: str, status: int) -> tuple[str, str | None]:
    known = _ERROR_TYPES.get(anthropic_type)
    if known is not None:
        return known
    return ("server_error" if status >= 500 else "invalid_request_error", anthropic_type)


def _error_fields(payload: object) -> tuple[str, str] | None:
    """(type, message) of an Anthropic error payload, or None if it is not one."""
    if not isinstance(payload, Mapping):
        return None
    error = payload.get("error")
    if not isinstance(error, Mapping):
        return None
    kind, message = error.get("type"), error.get("message")
    if not isinstance(message, str):
        return None
    return (kind if isinstance(kind, str) else "", message)


def anthropic_error_to_openai(
    status: int, body: bytes, *, max_json_items: int = MAX_JSON_ITEMS
) -> bytes:
    """Translate an Anthropic error body into OpenAI's error shape; the status stays."""
    try:
        fields = _error_fields(loads(body, max_items=max_json_items))
    except JSONError:
        fields = None
    if fields is None:
        return openai_error_body(
            f"the upstream answered HTTP {status} without an Anthropic error body",
            error_type="server_error" if status >= 500 else "invalid_request_error",
            code="upstream_error",
        )
    kind, message = fields
    error_type, code = _error_kind(kind, status)
    return openai_error_body(message, error_type=error_type, code=code)


# --- stream: Anthropic events -> chat.completion.chunk events ------------------

_DONE = b"data: [DONE]\n\n"

# Stream states.
_WAITING = 0  # no message_start yet
_OPEN = 1
_ENDED = 2  # message_stop, an error event, or a protocol error: nothing more to say


# The block nearly every event of a stream is, as Anthropic writes it: a text delta.
_TEXT_HEAD = b'event: content_block_delta\ndata: {"type":"content_block_delta","index":'
_TEXT_MID = b',"delta":{"type":"text_delta","text":"'
_TEXT_END = b'"}}\n\n'
# What may not be in a JSON string's body as it is (escapes and quotes aside).
_CONTROL = bytes(range(32))


def _plain_text(block: bytes) -> bytes | None:
    """The text of a text delta written as Anthropic writes it, as the JSON string it
    is in the block, if copying it is what parsing and writing it again would give
    (no escape, no quote, no control character, UTF-8); else None (parse it)."""
    if not (block.startswith(_TEXT_HEAD) and block.endswith(_TEXT_END)):
        return None
    mid = block.find(_TEXT_MID, len(_TEXT_HEAD))
    if mid < 0 or not block[len(_TEXT_HEAD) : mid].isdigit():
        return None
    text = block[mid + len(_TEXT_MID) : -len(_TEXT_END)]
    if (
        not text
        or b'"' in text
        or b"\\" in text
        or len(text.translate(None, _CONTROL)) != len(text)
    ):
        return None
    if not text.isascii():
        try:
            text.decode("utf-8")
        except UnicodeDecodeError:
            return None
    return text


def _event_data(block: bytes, max_items: int) -> Any:
    """The JSON of a block's data, parsed once; None for a block without data."""
    # The usual Anthropic block, "event: <type>\ndata: <json>\n\n": no line loop.
    start = block.find(b"\n") + 1 if block.startswith(b"event: ") else 0
    if (
        block.startswith(b"data: ", start)
        and block.find(b"\n", start) == len(block) - 2
        and block.endswith(b"\n\n")
    ):
        data = block[start + 6 : -2].decode("utf-8", "replace")  # as parse_block does
    else:
        event = parse_block(block)
        if not event.has_data:
            return None
        data = event.data
    try:
        return loads(data, max_items=max_items)
    except JSONError as exc:
        raise _upstream(f"an event's data is not JSON: {exc}") from None


class MessagesStreamToChat:
    """Incremental: Anthropic SSE event blocks in, OpenAI ``chat.completion.chunk`` blocks out.

    Feed each block the :class:`~core.SSEDecoder` returns; send what comes back.
    ``close()`` at the upstream's end returns what must still be sent: nothing
    after ``message_stop`` (which already gave ``data: [DONE]``) or an error
    event, an error event if the stream stopped short. An event that is not the
    Anthropic stream raises ``RemoteProtocolError`` (502,
    ``upstream_protocol_error``); the stream is over after it. ``usage`` holds the
    final usage once ``message_delta`` gave it, as Anthropic counts it:
    ``input_tokens`` (uncached), ``output_tokens``, ``cache_read_input_tokens``
    and ``cache_creation_input_tokens``.
    """

    __slots__ = (
        "_anthropic_usage",
        "_finished",
        "_head",
        "_include_usage",
        "_max_items",
        "_prefix",
        "_state",
        "_suffix",
        "_tail",
        "_tool_calls",
        "usage",
    )

    def __init__(
        self,
        *,
        model: str,
        created: int,
        completion_id: str,
        include_usage: bool,
        max_json_items: int = MAX_JSON_ITEMS,
    ) -> None:
        head = dumps(
            {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "system_fingerprint": None,
            }
        )
        self._head = b"data: " + head[:-1]
        self._prefix = self._head + b',"choices":[{"index":0,"delta":'
        # OpenAI: with include_usage, every chunk but the last carries "usage": null.
        self._tail = b',"usage":null}\n\n' if include_usage else b"}\n\n"
        self._suffix = b',"logprobs":null,"finish_reason":null}]' + self._tail
        self._include_usage = include_usage
        self._max_items = max_json_items
        self._state = _WAITING
        self._finished = False  # a finish_reason chunk was sent
        self._tool_calls: dict[int, int] = {}  # Anthropic block index -> tool call index
        self._anthropic_usage: dict[str, Any] = {}
        self.usage: dict[str, int] | None = None

    def feed(self, block: bytes) -> list[bytes]:
        """Translate one event block; return the blocks to send (often one, maybe none)."""
        state = self._state
        if state == _ENDED:
            return []  # the client already had [DONE] or an error: nothing can follow
        if state == _OPEN:  # the usual text delta: its JSON string copied, not parsed
            text = _plain_text(block)
            if text is not None:
                return [self._prefix + b'{"content":"' + text + b'"}' + self._suffix]
        try:
            data = _event_data(block, self._max_items)
            if data is None:
                return []  # a comment or a field without data: nothing for the client
            return self._translate(data)
        except (KeyError, TypeError, AttributeError):
            self._state = _ENDED
            raise _upstream(f"unexpected event {block[:200]!r}") from None
        except RemoteProtocolError:
            self._state = _ENDED
            raise

    def close(self) -> list[bytes]:
        """The upstream ended: an error event if it ended before ``message_stop``."""
        if self._state == _ENDED:
            return []
        self._state = _ENDED
        return [
            openai_error_event(
                "the upstream stream ended before message_stop",
                error_type="upstream_error",
                code="upstream_protocol_error",
            )
        ]

    def _chunk(self, delta: bytes) -> bytes:
        return self._prefix + delta + self._suffix

    def _translate(self, data: Any) -> list[bytes]:
        kind = data["type"]
        if kind == "content_block_delta":
            self._require_open(kind)
            delta = data["delta"]
            delta_type = delta["type"]
            if delta_type == "text_delta":
                text = delta["text"]
                if type(text) is not str:
                    raise _upstream("text_delta.text must be a string")
                if not text:
                    return []
                return [self._chunk(b'{"content":' + dumps(text) + b"}")]
            if delta_type == "input_json_delta":
                call = self._tool_calls.get(data["index"])
                if call is None:
                    raise _upstream("input_json_delta for a block that is not a tool_use")
                partial = delta["partial_json"]
                if type(partial) is not str:
                    raise _upstream("input_json_delta.partial_json must be a string")
                if not partial:
                    return []
                return [
                    self._chunk(
                        b'{"tool_calls":[{"index":%d,"function":{"arguments":%s}}]}'
                        % (call, dumps(partial))
                    )
                ]
            return []  # thinking_delta, signature_delta, citations_delta, new kinds
        if kind == "ping":
            return []
        if kind == "content_block_start":
            self._require_open(kind)
            return self._block_start(data["index"], data["content_block"])
        if kind == "content_block_stop":
            self._require_open(kind)
            return []
        if kind == "message_delta":
            self._require_open(kind)
            return self._message_delta(data["delta"], data.get("usage"))
        if kind == "message_start":
            if self._state != _WAITING:
                raise _upstream("a second message_start")
            usage = data["message"].get("usage")
            if usage is not None:
                if not isinstance(usage, Mapping):
                    raise _upstream("message_start usage must be an object")
                self._anthropic_usage.update(usage)
            self._state = _OPEN
            return [self._chunk(b'{"role":"assistant","content":""}')]
        if kind == "message_stop":
            self._require_open(kind)
            self._state = _ENDED
            out = [] if self._finished else [self._finish_chunk("stop")]
            self.usage = _native_usage(self._anthropic_usage)
            if self._include_usage:
                # After the finish chunk, as OpenAI does: a chunk with no choices. Sent
                # here rather than at message_delta, which may come more than once.
                usage = _openai_usage(self._anthropic_usage)
                out.append(self._head + b',"choices":[],"usage":' + dumps(usage) + b"}\n\n")
            out.append(_DONE)
            return out
        if kind == "error":
            fields = _error_fields(data)
            if fields is None:
                raise _upstream("an error event without an error message")
            self._state = _ENDED
            error_type, code = _error_kind(fields[0], 500)
            return [openai_error_event(fields[1], error_type=error_type, code=code)]
        return []  # an event type added after this was written: ignored, as documented

    def _require_open(self, kind: str) -> None:
        if self._state != _OPEN:
            raise _upstream(f"{kind} before message_start")

    def _block_start(self, index: int, block: Mapping[str, Any]) -> list[bytes]:
        block_type = block["type"]
        if block_type == "text":
            text = block.get("text")
            if isinstance(text, str) and text:
                return [self._chunk(b'{"content":' + dumps(text) + b"}")]
            return []
        if block_type == "tool_use":
            call_id, name = block["id"], block["name"]
            if not isinstance(call_id, str) or not isinstance(name, str) or type(index) is not int:
                raise _upstream("a tool_use block needs an index and string 'id' and 'name'")
            if index in self._tool_calls:
                raise _upstream(f"content block {index} started twice")
            call = len(self._tool_calls)
            self._tool_calls[index] = call
            start = {
                "tool_calls": [
                    {
                        "index": call,
                        "id": call_id,
                        "type": "function",
                        "function": {"name": name, "arguments": ""},
                    }
                ]
            }
            return [self._chunk(dumps(start))]
        return []  # thinking, redacted_thinking, unknown block types: left out

    def _message_delta(self, delta: Mapping[str, Any], usage: object) -> list[bytes]:
        if usage is not None:
            if not isinstance(usage, Mapping):
                raise _upstream("message_delta.usage must be an object")
            # Counts in message_delta are cumulative: the latest one wins.
            self._anthropic_usage.update((k, v) for k, v in usage.items() if v is not None)
        self.usage = _native_usage(self._anthropic_usage)
        stop_reason = delta.get("stop_reason")
        if stop_reason is None or self._finished:
            return []
        return [self._finish_chunk(_finish_reason(stop_reason))]

    def _finish_chunk(self, reason: str) -> bytes:
        self._finished = True
        return (
            self._prefix
            + b'{},"logprobs":null,"finish_reason":"'
            + reason.encode()
            + b'"}]'
            + self._tail
        )
