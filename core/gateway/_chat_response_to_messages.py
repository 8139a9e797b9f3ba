"""What comes back, OpenAI -> Anthropic: a Chat Completions answer, error or stream as Messages.

The other half of :mod:`._messages_request_to_chat`: an Anthropic client sent
a Messages request, an OpenAI-compatible upstream answered. Pure functions and
one incremental stream translator, no I/O:

- :func:`chat_response_to_messages` -- a ``chat.completion`` to an Anthropic ``message``;
- :func:`openai_error_to_anthropic` -- an OpenAI error body to Anthropic's error shape
  (the status stays);
- :class:`ChatStreamToMessages` -- ``chat.completion.chunk`` events (with
  ``stream_options.include_usage``) to Anthropic stream events.

The wire formats follow the providers' references: OpenAI's
``chat.completion``, ``chat.completion.chunk`` and ``{"error": {...}}``
bodies; Anthropic's message object, streaming events and error shapes. Every
error shape comes from :mod:`core._render`, every JSON from
``core._json.dumps``.

``finish_reason`` ``stop`` -> ``end_turn`` (Chat Completions does not say
whether a stop sequence matched, so ``stop_sequence`` stays null), ``length``
-> ``max_tokens``, ``tool_calls`` / ``function_call`` -> ``tool_use``,
``content_filter`` (or a ``refusal`` from the model) -> ``refusal``. Usage:
``input_tokens`` = prompt tokens minus cached ones,
``cache_read_input_tokens`` = the cached ones (only when the upstream reports
them), ``output_tokens`` = completion tokens.

Refused: a JSON answer that is not a chat completion (no choices, tool-call
arguments that are not a JSON object ...) raises ``RemoteProtocolError`` (502,
``upstream_protocol_error``); in a stream, a malformed chunk or an upstream
error becomes an Anthropic ``event: error`` and ends the stream.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final, NoReturn

from .._errors import LocalProtocolError, NetworkError, anthropic_type
from .._json import MAX_JSON_ITEMS, JSONError, dumps, loads
from .._render import anthropic_error_body, anthropic_error_event
from .._sse import parse_block

__all__ = ["ChatStreamToMessages", "chat_response_to_messages", "openai_error_to_anthropic"]

# --- errors ------------------------------------------------------------------


def _bad_upstream(why: str) -> NoReturn:
    raise NetworkError(
        f"upstream sent an invalid chat completion: {why}", code="upstream_protocol_error"
    )


# --- response: OpenAI chat completion -> Anthropic message -------------------

_STOP_REASONS: Final[dict[str, str]] = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}


def _stop_reason(finish_reason: str | None, refused: bool) -> str:
    if refused:
        return "refusal"
    if finish_reason is None:
        return "end_turn"
    return _STOP_REASONS.get(finish_reason, "end_turn")


def _count(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError("token counts must be non-negative integers")
    return value


def _usage(raw: Any) -> dict[str, int]:
    """Anthropic usage from an OpenAI usage object; ValueError if malformed."""
    if raw is None:
        return {"input_tokens": 0, "output_tokens": 0}
    if not isinstance(raw, dict):
        raise ValueError("usage must be an object")
    prompt = _count(raw.get("prompt_tokens")) or 0
    completion = _count(raw.get("completion_tokens")) or 0
    details = raw.get("prompt_tokens_details")
    cached = None
    if details is not None:
        if not isinstance(details, dict):
            raise ValueError("usage.prompt_tokens_details must be an object")
        cached = _count(details.get("cached_tokens"))
    if cached is None:
        return {"input_tokens": prompt, "output_tokens": completion}
    return {
        "input_tokens": max(prompt - cached, 0),
        "cache_read_input_tokens": cached,
        "output_tokens": completion,
    }


def _tool_input(arguments: Any, max_items: int) -> dict[str, Any]:
    if not isinstance(arguments, str):
        _bad_upstream("tool call arguments must be a string")
    if not arguments.strip():
        return {}  # some compatible servers send "" for a call without arguments
    try:
        parsed = loads(arguments, max_items=max_items)
    except JSONError as exc:
        _bad_upstream(f"tool call arguments are not JSON ({exc}): {arguments[:200]!r}")
    if not isinstance(parsed, dict):
        _bad_upstream("tool call arguments must be a JSON object")
    return parsed


def chat_response_to_messages(
    body: Mapping[str, Any],
    *,
    model: str,
    message_id: str | None = None,
    max_json_items: int = MAX_JSON_ITEMS,
) -> dict[str, Any]:
    """Translate an OpenAI ``chat.completion`` into an Anthropic message.

    ``model`` is the name the client asked for; ``message_id`` defaults to the
    upstream id with a ``msg_`` prefix. Raises ``RemoteProtocolError`` (502,
    ``upstream_protocol_error``) for a response that cannot be translated,
    such as tool call arguments that are not a JSON object.
    """
    if not isinstance(body, Mapping):
        _bad_upstream("the body is not a JSON object")
    choices = body.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        _bad_upstream("no choices")
    choice = choices[0]
    message = choice.get("message")
    if not isinstance(message, dict):
        _bad_upstream("choices[0].message must be an object")
    content: list[dict[str, Any]] = []
    text = message.get("content")
    refusal = message.get("refusal")
    if (text is not None and not isinstance(text, str)) or (
        refusal is not None and not isinstance(refusal, str)
    ):
        _bad_upstream("message content and refusal must be strings")
    joined = (text or "") + (refusal or "")
    if joined:
        content.append({"type": "text", "text": joined})
    tool_calls = message.get("tool_calls")
    if tool_calls is not None:
        if not isinstance(tool_calls, list):
            _bad_upstream("tool_calls must be an array")
        for call in tool_calls:
            if not isinstance(call, dict) or call.get("type", "function") != "function":
                _bad_upstream("tool_calls entries must be function calls")
            function = call.get("function")
            if not isinstance(function, dict):
                _bad_upstream("tool call function must be an object")
            call_id, name = call.get("id"), function.get("name")
            if not isinstance(call_id, str) or not isinstance(name, str):
                _bad_upstream("tool call id and name must be strings")
            content.append(
                {
                    "type": "tool_use",
                    "id": call_id,
                    "name": name,
                    "input": _tool_input(function.get("arguments"), max_json_items),
                }
            )
    finish_reason = choice.get("finish_reason")
    if finish_reason is not None and not isinstance(finish_reason, str):
        _bad_upstream("finish_reason must be a string")
    try:
        usage = _usage(body.get("usage"))
    except ValueError as exc:
        _bad_upstream(str(exc))
    if message_id is None:
        upstream_id = body.get("id")
        message_id = f"msg_{upstream_id}" if isinstance(upstream_id, str) else "msg_unknown"
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": _stop_reason(finish_reason, bool(refusal)),
        "stop_sequence": None,
        "usage": usage,
    }


# --- errors: OpenAI -> Anthropic ---------------------------------------------


# Anthropic's error types by HTTP status (docs: "HTTP errors"); other 4xx are
# invalid_request_error, other 5xx api_error. OpenAI answers 503 when overloaded.
def openai_error_to_anthropic(
    status: int, body: bytes, *, max_json_items: int = MAX_JSON_ITEMS
) -> bytes:
    """Turn an upstream OpenAI error body into Anthropic's error shape.

    The message is kept (``error.message``, or a bare ``error`` string as some
    compatible servers send); a body without one gets a generic message.
    """
    message: str | None = None
    try:
        parsed: Any = loads(body, max_items=max_json_items)
    except JSONError:
        parsed = None
    if isinstance(parsed, dict):
        error = parsed.get("error")
        if isinstance(error, dict):
            error = error.get("message")
        if isinstance(error, str) and error:
            message = error
    if message is None:
        message = f"upstream error (HTTP {status})"
    return anthropic_error_body(message, error_type=anthropic_type(status))


# --- stream: chat.completion.chunk events -> Anthropic events ----------------

_PING: Final = b'event: ping\ndata: {"type":"ping"}\n\n'
_MESSAGE_STOP: Final = b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
_TEXT_START: Final = (
    b'event: content_block_start\ndata: {"type":"content_block_start","index":%d,'
    b'"content_block":{"type":"text","text":""}}\n\n'
)
_TEXT_DELTA: Final = (
    b'event: content_block_delta\ndata: {"type":"content_block_delta","index":%d,'
    b'"delta":{"type":"text_delta","text":'
)
_JSON_DELTA: Final = (
    b'event: content_block_delta\ndata: {"type":"content_block_delta","index":%d,'
    b'"delta":{"type":"input_json_delta","partial_json":'
)
_DELTA_END: Final = b"}}\n\n"
_BLOCK_STOP: Final = (
    b'event: content_block_stop\ndata: {"type":"content_block_stop","index":%d}\n\n'
)

# Stream states.
_WAITING = 0  # nothing sent yet
_STREAMING = 1  # message_start sent
_ENDED = 2  # message_stop or error sent; later blocks are ignored
_CLOSED = 3  # close() called

# Kinds of open content block.
_NO_BLOCK = 0
_TEXT_BLOCK = 1
_TOOL_BLOCK = 2


class _Malformed(Exception):
    pass


def _event(kind: str, payload: dict[str, Any]) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + dumps(payload) + b"\n\n"


class ChatStreamToMessages:
    """Incremental: OpenAI ``chat.completion.chunk`` SSE blocks in, Anthropic SSE events out.

    ``feed`` takes one canonical block (as ``SSEDecoder`` returns it) and
    returns zero or more canonical blocks, ``event: <type>`` with the same
    ``type`` inside the compact JSON data. The first chunk opens the message
    (``message_start``, ``ping``); text and tool-call deltas open content
    blocks at increasing indices, one at a time; ``data: [DONE]`` closes the
    open block and sends ``message_delta`` (stop reason, usage) and
    ``message_stop``. An upstream error or a malformed chunk becomes an
    Anthropic ``event: error`` and ends the stream. ``close`` (upstream EOF)
    finishes a stream whose ``finish_reason`` came without ``[DONE]``, or
    reports one that ended early as an error. ``usage`` holds the Anthropic
    usage once the upstream has reported it.
    """

    __slots__ = (
        "_block",
        "_delta",
        "_finish",
        "_id",
        "_max_items",
        "_model",
        "_open",
        "_refused",
        "_state",
        "_tool",
        "_tools_seen",
        "usage",
    )

    def __init__(
        self, *, model: str, message_id: str, max_json_items: int = MAX_JSON_ITEMS
    ) -> None:
        self._model = model
        self._max_items = max_json_items
        self._id = message_id
        self.usage: dict[str, int] | None = None
        self._state = _WAITING
        self._block = -1  # index of the last block started
        self._open = _NO_BLOCK
        self._delta = b""  # the open block's delta prefix, its index filled in
        self._tool = -1  # upstream index of the open tool call
        self._tools_seen: set[int] = set()
        self._finish: str | None = None
        self._refused = False

    def feed(self, block: bytes) -> list[bytes]:
        """Translate one upstream SSE block."""
        state = self._state
        if state >= _ENDED:
            if state == _CLOSED:
                raise LocalProtocolError(
                    "ChatStreamToMessages.feed() called after close()",
                    error_status_hint=500,
                    error_type="server_error",
                )
            return []
        event: str | None
        if (  # the usual block: one "data: " line
            block[:6] == b"data: " and block.find(b"\n") == len(block) - 2 and b"\r" not in block
        ):
            data = block[6:-2].decode("utf-8", "replace")  # as parse_block decodes
            event = None
        else:
            parsed = parse_block(block)
            if not parsed.has_data:
                return []  # comments, keep-alives
            data = parsed.data
            event = parsed.event
        if data[:1] == "[" and data.strip() == "[DONE]":
            return self._finish_message([])
        out: list[bytes] = []
        try:
            try:
                chunk = loads(data, max_items=self._max_items)
            except JSONError:
                if not data.strip():
                    return []
                raise
            if type(chunk) is not dict:
                raise _Malformed("a chunk must be a JSON object")
            error = chunk.get("error")
            if error or event == "error":
                message = error.get("message") if isinstance(error, dict) else error
                if not isinstance(message, str) or not message:
                    message = "upstream error"
                return self._fail(out, message)
            self._chunk(chunk, out)
        except (ValueError, _Malformed) as exc:
            return self._fail(out, f"upstream sent a malformed chunk: {exc}")
        return out

    def close(self) -> list[bytes]:
        """The upstream ended: finish the message, or report that it ended early."""
        state = self._state
        if state == _CLOSED:
            raise LocalProtocolError(
                "ChatStreamToMessages.close() called twice",
                error_status_hint=500,
                error_type="server_error",
            )
        self._state = _CLOSED
        if state == _ENDED:
            return []
        if state == _STREAMING and self._finish is not None:
            return self._finish_message([])
        return [
            anthropic_error_event(
                "upstream stream ended before the message was complete", error_type="api_error"
            )
        ]

    # -- internals --

    def _start(self, out: list[bytes]) -> None:
        self._state = _STREAMING
        known = self.usage
        message: dict[str, Any] = {
            "id": self._id,
            "type": "message",
            "role": "assistant",
            "model": self._model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": known["input_tokens"] if known else 0, "output_tokens": 0},
        }
        out.append(_event("message_start", {"type": "message_start", "message": message}))
        out.append(_PING)

    def _close_block(self, out: list[bytes]) -> None:
        if self._open != _NO_BLOCK:
            out.append(_BLOCK_STOP % self._block)
            self._open = _NO_BLOCK

    def _text(self, text: str, out: list[bytes]) -> None:
        if self._open != _TEXT_BLOCK:
            self._close_block(out)
            self._block += 1
            self._open = _TEXT_BLOCK
            out.append(_TEXT_START % self._block)
            self._delta = _TEXT_DELTA % self._block
        out.append(self._delta + dumps(text) + _DELTA_END)

    def _tool_delta(self, call: Any, out: list[bytes]) -> None:
        if not isinstance(call, dict):
            raise _Malformed("tool_calls entries must be objects")
        index = call.get("index")
        if type(index) is not int:
            raise _Malformed("a tool call delta needs an integer index")
        function = call.get("function")
        if function is None:
            function = {}
        elif not isinstance(function, dict):
            raise _Malformed("tool call function must be an object")
        if self._open != _TOOL_BLOCK or index != self._tool:
            if index in self._tools_seen:
                raise _Malformed(f"tool call {index} continued after another block began")
            name = function.get("name")
            if not isinstance(name, str) or not name:
                raise _Malformed(f"tool call {index} starts without a name")
            call_id = call.get("id")
            if not isinstance(call_id, str) or not call_id:
                call_id = f"toolu_{self._id}_{index}"
            self._close_block(out)
            self._block += 1
            self._open = _TOOL_BLOCK
            self._tool = index
            self._tools_seen.add(index)
            start = {
                "type": "content_block_start",
                "index": self._block,
                "content_block": {"type": "tool_use", "id": call_id, "name": name, "input": {}},
            }
            out.append(_event("content_block_start", start))
            self._delta = _JSON_DELTA % self._block
        arguments = function.get("arguments")
        if arguments is not None:
            if type(arguments) is not str:
                raise _Malformed("tool call arguments must be a string")
            if arguments:
                out.append(self._delta + dumps(arguments) + _DELTA_END)

    def _chunk(self, chunk: dict[str, Any], out: list[bytes]) -> None:
        usage = chunk.get("usage")
        if usage is not None:
            self.usage = _usage(usage)
        if self._state == _WAITING:
            self._start(out)
        choices = chunk.get("choices")  # [] in the usage-only chunk
        if not isinstance(choices, list):
            if choices is None:
                return
            raise _Malformed("choices must be an array")
        for choice in choices:
            if type(choice) is not dict or choice.get("index", 0) != 0:
                raise _Malformed("choices entries must be objects for choice 0")
            delta = choice.get("delta")
            if delta is not None:
                if type(delta) is not dict:
                    raise _Malformed("delta must be an object")
                text = delta.get("content")
                if text is not None:
                    if type(text) is not str:
                        raise _Malformed("delta.content must be a string")
                    if text:
                        self._text(text, out)
                refusal = delta.get("refusal")
                if refusal is not None:
                    if type(refusal) is not str:
                        raise _Malformed("delta.refusal must be a string")
                    if refusal:
                        self._refused = True
                        self._text(refusal, out)
                calls = delta.get("tool_calls")
                if calls is not None:
                    if type(calls) is not list:
                        raise _Malformed("delta.tool_calls must be an array")
                    for call in calls:
                        self._tool_delta(call, out)
            finish = choice.get("finish_reason")
            if finish is not None:
                if type(finish) is not str:
                    raise _Malformed("finish_reason must be a string")
                self._finish = finish

    def _finish_message(self, out: list[bytes]) -> list[bytes]:
        if self._state == _WAITING:
            self._start(out)
        self._close_block(out)
        usage = self.usage if self.usage is not None else {"output_tokens": 0}
        delta = {
            "type": "message_delta",
            "delta": {
                "stop_reason": _stop_reason(self._finish, self._refused),
                "stop_sequence": None,
            },
            "usage": usage,
        }
        out.append(_event("message_delta", delta))
        out.append(_MESSAGE_STOP)
        if self._state != _CLOSED:
            self._state = _ENDED
        return out

    def _fail(self, out: list[bytes], message: str) -> list[bytes]:
        self._state = _ENDED
        out.append(anthropic_error_event(message, error_type="api_error"))
        return out
