"""The built-in mock provider: deterministic OpenAI and Anthropic answers, no network.

Served when no upstream is configured, so a fresh install answers something
useful to either official SDK. The same request always gets the same answer
(ids derive from the exchange id, timestamps from the exchange's start).

One reply serves both APIs (:func:`_reply`): it echoes the last user message,
cut at the request's token limit, or calls a tool when tools are given (the
named one, else the first) with placeholder arguments built from the tool's
schema -- except after a tool result, when ``auto`` lets the mock answer text,
so that an agent loop ends. Its usage (about four characters a token) is the
answer's and the exchange's, as the trace records it.
"""

from __future__ import annotations

import hashlib
import math
import struct
from dataclasses import dataclass
from typing import Any, Final, Literal

from .._endpoints import ENDPOINTS
from .._errors import ModelNotFoundError, ValidationError
from .._http import parse_json_object
from .._json import MAX_JSON_ITEMS, dumps
from ._usage import Usage

__all__ = ["MOCK_MODELS", "MockAnswer", "mock_answer"]

MOCK_MODELS = ("mock-gpt", "mock-embedding")
_EMBEDDING_DIMS = 16
_JSON = (b"content-type", b"application/json")
_SSE = (b"content-type", b"text/event-stream")
_ARGUMENT_PIECE = 16  # characters of tool arguments per stream delta


@dataclass(frozen=True, slots=True, kw_only=True)
class MockAnswer:
    """The mock's answer: a status, headers, either a body or SSE blocks, and its usage."""

    status: int
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes = b""
    blocks: tuple[bytes, ...] = ()
    stream: bool = False
    usage: Usage | None = None


def _json_answer(value: Any, usage: Usage | None = None) -> MockAnswer:
    body = dumps(value)
    return MockAnswer(
        status=200,
        headers=(_JSON, (b"content-length", str(len(body)).encode())),
        body=body,
        usage=usage,
    )


def _sse_answer(blocks: list[bytes], usage: Usage) -> MockAnswer:
    return MockAnswer(
        status=200,
        headers=(_SSE, (b"cache-control", b"no-cache")),
        blocks=tuple(blocks),
        stream=True,
        usage=usage,
    )


def _bad(message: str, param: str | None = None) -> ValidationError:
    return ValidationError(message, code="invalid_value" if param else None, param=param)


def _tokens(text: str) -> int:
    """A deterministic stand-in for a tokenizer: about four characters a token."""
    return max(1, math.ceil(len(text) / 4)) if text else 0


def _text_of(content: Any) -> str:
    """The text of a message's content: a string, or parts (a tool result's own content)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            str(part["text"]) if "text" in part else _text_of(part.get("content"))
            for part in content
            if isinstance(part, dict)
        )
    return ""


def _model(request: dict[str, Any]) -> str:
    model = request.get("model")
    if not isinstance(model, str) or not model:
        raise _bad("'model' is required", "model")
    return model


def _messages(request: dict[str, Any]) -> list[dict[str, Any]]:
    messages = request.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _bad("'messages' must be a non-empty array", "messages")
    if not all(isinstance(message, dict) for message in messages):
        raise _bad("each message must be an object", "messages")
    return messages


def _prompt(messages: list[dict[str, Any]], system: str = "") -> tuple[int, str]:
    """The prompt's tokens, and the last user message's text."""
    prompt = system
    last_user = ""
    for message in messages:
        text = _text_of(message.get("content"))
        prompt += text
        if message.get("role") == "user":
            last_user = text
    return _tokens(prompt) + 3 * len(messages), last_user


# --- tools -------------------------------------------------------------------

#: How a request lets the model use its tools: not at all, if it likes, or it must.
_ToolMode = Literal["none", "auto", "forced"]
_PLACEHOLDERS: Final[dict[str, Any]] = {  # immutable: shared by every answer
    "string": "mock",
    "integer": 0,
    "number": 0,
    "boolean": False,
    "array": (),  # dumped as []
    "null": None,
}


def _placeholder(schema: Any) -> Any:
    """A value a JSON schema accepts: its first enum value, its const, or one of its type."""
    if not isinstance(schema, dict):
        return "mock"
    enum = schema.get("enum")
    if isinstance(enum, list) and enum:
        return enum[0]
    if "const" in schema:
        return schema["const"]
    kind = schema.get("type")
    if isinstance(kind, list):  # ["string", "null"]: the first that is not null
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object":
        return _arguments(schema)
    return _PLACEHOLDERS.get(kind, "mock") if isinstance(kind, str) else "mock"


def _arguments(schema: Any) -> dict[str, Any]:
    """Arguments for a tool: each required property of its schema, a placeholder value."""
    if not isinstance(schema, dict):
        return {}
    properties = schema.get("properties")
    if not isinstance(properties, dict):
        properties = {}
    required = schema.get("required")
    if not isinstance(required, list):
        return {}
    return {name: _placeholder(properties.get(name)) for name in required if isinstance(name, str)}


def _pick_tool(
    tools: list[tuple[str, Any]], mode: _ToolMode, named: Any, answered: bool
) -> tuple[str, Any] | None:
    """The (name, schema) of the tool to call, or ``None`` to answer text.

    ``answered``: the conversation ends with a tool result; ``auto`` then answers.
    """
    if not tools or mode == "none" or (mode == "auto" and answered):
        return None
    return next((tool for tool in tools if tool[0] == named), tools[0])


# --- the reply, whichever API asked -------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class _Reply:
    """What the mock "generates": text or a tool call, in stream pieces, and its usage."""

    pieces: tuple[str, ...]  # the text, or the tool call's JSON arguments, piece by piece
    stop: Literal["end", "length", "tool"]
    usage: Usage
    tool: str | None = None  # the name of the tool called
    arguments: dict[str, Any] | None = None

    @property
    def text(self) -> str:
        return "".join(self.pieces)


def _reply(
    messages: list[dict[str, Any]],
    limit: Any,
    *,
    system: str = "",
    tool: tuple[str, Any] | None = None,
) -> _Reply:
    input_tokens, last_user = _prompt(messages, system)
    if tool is not None:
        name, schema = tool
        arguments = _arguments(schema)
        text = dumps(arguments).decode()
        return _Reply(
            pieces=tuple(
                text[i : i + _ARGUMENT_PIECE] for i in range(0, len(text), _ARGUMENT_PIECE)
            ),
            stop="tool",
            usage=Usage(input_tokens=input_tokens, output_tokens=_tokens(name + text)),
            tool=name,
            arguments=arguments,
        )
    words = f"This is the sansproxy mock. You said: {last_user[:500]}".split()
    stop: Literal["end", "length"] = "end"
    if isinstance(limit, int) and not isinstance(limit, bool) and 0 < limit < len(words):
        words, stop = words[:limit], "length"
    return _Reply(
        pieces=tuple(w if i == 0 else " " + w for i, w in enumerate(words)),
        stop=stop,
        usage=Usage(input_tokens=input_tokens, output_tokens=len(words)),
    )


# --- OpenAI Chat Completions ---------------------------------------------------

_FINISH_REASONS: Final = {"end": "stop", "length": "length", "tool": "tool_calls"}


def _chat_tool(request: dict[str, Any], messages: list[dict[str, Any]]) -> tuple[str, Any] | None:
    tools = request.get("tools")
    functions = [
        (function["name"], function.get("parameters"))
        for entry in (tools if isinstance(tools, list) else ())
        if isinstance(entry, dict)
        and entry.get("type", "function") == "function"
        and isinstance(function := entry.get("function"), dict)
        and isinstance(function.get("name"), str)
    ]
    choice = request.get("tool_choice", "auto")
    named = None
    if isinstance(choice, dict):  # {"type": "function", "function": {"name": ...}}
        function = choice.get("function")
        named = function.get("name") if isinstance(function, dict) else None
    mode: _ToolMode = (
        "none" if choice == "none" else "forced" if choice == "required" or named else "auto"
    )
    answered = messages[-1].get("role") in ("tool", "function")
    return _pick_tool(functions, mode, named, answered)


def _chat(request: dict[str, Any], exchange_id: str, created: int) -> MockAnswer:
    messages = _messages(request)
    model = _model(request)
    reply = _reply(
        messages,
        request.get("max_completion_tokens", request.get("max_tokens")),
        tool=_chat_tool(request, messages),
    )
    finish = _FINISH_REASONS[reply.stop]
    usage = {
        "prompt_tokens": reply.usage.input_tokens,
        "completion_tokens": reply.usage.output_tokens,
        "total_tokens": reply.usage.input_tokens + reply.usage.output_tokens,
    }
    ident = f"chatcmpl-mock-{exchange_id}"
    call_id = f"call_mock_{exchange_id}"
    if not request.get("stream"):
        message: dict[str, Any] = {"role": "assistant", "content": reply.text, "refusal": None}
        if reply.tool is not None:
            message["content"] = None
            function = {"name": reply.tool, "arguments": reply.text}
            message["tool_calls"] = [{"id": call_id, "type": "function", "function": function}]
        return _json_answer(
            {
                "id": ident,
                "object": "chat.completion",
                "created": created,
                "model": model,
                "choices": [
                    {"index": 0, "message": message, "logprobs": None, "finish_reason": finish}
                ],
                "usage": usage,
                "system_fingerprint": "sansproxy-mock",
            },
            reply.usage,
        )

    def chunk(choices: list[dict[str, Any]], **extra: Any) -> bytes:
        envelope = {
            "id": ident,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "system_fingerprint": "sansproxy-mock",
            "choices": choices,
            **extra,
        }
        return b"data: " + dumps(envelope) + b"\n\n"

    def delta(content: dict[str, Any], finish_reason: str | None = None) -> bytes:
        choice = {"index": 0, "delta": content, "logprobs": None, "finish_reason": finish_reason}
        return chunk([choice])

    if reply.tool is None:
        blocks = [delta({"role": "assistant", "content": ""})]
        blocks.extend(delta({"content": piece}) for piece in reply.pieces)
    else:
        start = {"name": reply.tool, "arguments": ""}
        call = {"index": 0, "id": call_id, "type": "function", "function": start}
        blocks = [delta({"role": "assistant", "content": None, "tool_calls": [call]})]
        blocks.extend(
            delta({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]})
            for piece in reply.pieces
        )
    blocks.append(delta({}, finish))
    options = request.get("stream_options")
    if isinstance(options, dict) and options.get("include_usage"):
        blocks.append(chunk([], usage=usage))
    blocks.append(b"data: [DONE]\n\n")
    return _sse_answer(blocks, reply.usage)


# --- Anthropic Messages --------------------------------------------------------

_STOP_REASONS: Final = {"end": "end_turn", "length": "max_tokens", "tool": "tool_use"}


def _event(payload: dict[str, Any]) -> bytes:
    return b"event: " + str(payload["type"]).encode() + b"\ndata: " + dumps(payload) + b"\n\n"


def _anthropic_tool(
    request: dict[str, Any], messages: list[dict[str, Any]]
) -> tuple[str, Any] | None:
    tools = request.get("tools")
    custom = [  # server tools (web search, ...) have no input_schema: the mock runs none
        (entry["name"], entry["input_schema"])
        for entry in (tools if isinstance(tools, list) else ())
        if isinstance(entry, dict)
        and entry.get("type", "custom") == "custom"
        and isinstance(entry.get("name"), str)
        and "input_schema" in entry
    ]
    choice = request.get("tool_choice")
    kind = choice.get("type", "auto") if isinstance(choice, dict) else "auto"
    named = choice.get("name") if isinstance(choice, dict) and kind == "tool" else None
    mode: _ToolMode = "none" if kind == "none" else "forced" if kind in ("any", "tool") else "auto"
    last = messages[-1].get("content")
    answered = isinstance(last, list) and any(
        isinstance(block, dict) and block.get("type") == "tool_result" for block in last
    )
    return _pick_tool(custom, mode, named, answered)


def _max_tokens(request: dict[str, Any]) -> int:
    limit = request.get("max_tokens")
    if type(limit) is not int or limit < 1:
        raise _bad("'max_tokens' is required: an integer >= 1", "max_tokens")
    return limit


def _anthropic_messages(request: dict[str, Any], exchange_id: str) -> MockAnswer:
    model = _model(request)
    limit = _max_tokens(request)
    messages = _messages(request)
    reply = _reply(
        messages,
        limit,
        system=_text_of(request.get("system")),
        tool=_anthropic_tool(request, messages),
    )
    head: dict[str, Any] = {"id": f"msg_{exchange_id}", "type": "message", "role": "assistant"}
    stop_reason = _STOP_REASONS[reply.stop]
    usage = reply.usage
    if reply.tool is None:
        block: dict[str, Any] = {"type": "text", "text": ""}
        whole: dict[str, Any] = {"type": "text", "text": reply.text}
        delta = {"type": "text_delta"}
        field = "text"
    else:
        block = {"type": "tool_use", "id": f"toolu_{exchange_id}", "name": reply.tool, "input": {}}
        whole = {**block, "input": reply.arguments}
        delta = {"type": "input_json_delta"}
        field = "partial_json"
    if not request.get("stream"):
        counts = {"input_tokens": usage.input_tokens, "output_tokens": usage.output_tokens}
        message = {
            **head,
            "model": model,
            "content": [whole],
            "stop_reason": stop_reason,
            "stop_sequence": None,
            "usage": counts,
        }
        return _json_answer(message, usage)
    # As the API streams it: the input count first (and an output count of 1), the
    # cumulative output count last.
    started: dict[str, Any] = {
        **head,
        "content": [],
        "model": model,
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": usage.input_tokens, "output_tokens": 1},
    }
    blocks = [
        _event({"type": "message_start", "message": started}),
        _event({"type": "content_block_start", "index": 0, "content_block": block}),
        _event({"type": "ping"}),
    ]
    blocks.extend(
        _event({"type": "content_block_delta", "index": 0, "delta": {**delta, field: piece}})
        for piece in reply.pieces
    )
    stopped = {"stop_reason": stop_reason, "stop_sequence": None}
    blocks += [
        _event({"type": "content_block_stop", "index": 0}),
        _event(
            {
                "type": "message_delta",
                "delta": stopped,
                "usage": {"output_tokens": usage.output_tokens},
            }
        ),
        _event({"type": "message_stop"}),
    ]
    return _sse_answer(blocks, usage)


def _count_tokens(request: dict[str, Any]) -> MockAnswer:
    _model(request)
    tokens, _ = _prompt(_messages(request), _text_of(request.get("system")))
    return _json_answer({"input_tokens": tokens})


# --- OpenAI embeddings ---------------------------------------------------------


def _embedding(text: str) -> list[float]:
    digest = hashlib.sha256(text.encode()).digest()
    raw = struct.unpack(f"<{_EMBEDDING_DIMS}H", digest[: 2 * _EMBEDDING_DIMS])
    return [round(v / 32767.5 - 1.0, 6) for v in raw]


def _embeddings(request: dict[str, Any]) -> MockAnswer:
    model = _model(request)
    inputs = request.get("input")
    if isinstance(inputs, str):
        inputs = [inputs]
    if not isinstance(inputs, list) or not inputs or not all(isinstance(i, str) for i in inputs):
        raise _bad("'input' must be a string or a non-empty array of strings", "input")
    tokens = sum(_tokens(i) for i in inputs)
    return _json_answer(
        {
            "object": "list",
            "data": [
                {"object": "embedding", "index": i, "embedding": _embedding(text)}
                for i, text in enumerate(inputs)
            ],
            "model": model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        },
        Usage(input_tokens=tokens, output_tokens=0),
    )


def mock_answer(
    method: bytes,
    path: bytes,
    body: bytes,
    *,
    exchange_id: str,
    created: int,
    max_json_items: int = MAX_JSON_ITEMS,
) -> MockAnswer:
    """Answer one request as the mock provider would; raises ``RemoteProtocolError``."""
    found = ENDPOINTS.get((method, path))
    endpoint = None if found is None else found[1]
    if endpoint == "models":
        return _json_answer(
            {
                "object": "list",
                "data": [
                    {"id": m, "object": "model", "created": 0, "owned_by": "sansproxy"}
                    for m in MOCK_MODELS
                ],
            }
        )
    if endpoint in ("chat", "embeddings", "messages", "count_tokens"):
        request = parse_json_object(body, max_items=max_json_items)
        if endpoint == "chat":
            return _chat(request, exchange_id, created)
        if endpoint == "messages":
            return _anthropic_messages(request, exchange_id)
        if endpoint == "count_tokens":
            return _count_tokens(request)
        return _embeddings(request)
    raise ModelNotFoundError(
        f"the mock provider does not serve {method.decode('latin-1')} "
        f"{path.decode('latin-1')}; it serves GET /v1/models, POST /v1/chat/completions, "
        "POST /v1/embeddings, POST /v1/messages and POST /v1/messages/count_tokens",
        code="unknown_url",
    )
