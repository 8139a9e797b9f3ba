"""Translate an Anthropic Messages client to an OpenAI Chat Completions upstream.

Pure functions over parsed JSON, and one incremental stream translator. The
wire formats follow the providers' references: Anthropic's Messages API
(``POST /v1/messages``, its streaming events and error shapes) and OpenAI's
Chat Completions API (request, ``chat.completion``, ``chat.completion.chunk``
with ``stream_options.include_usage``, ``{"error": {...}}`` bodies).

A request parameter that cannot be carried over raises ``RemoteProtocolError``
(400, ``invalid_request_error``, code ``unsupported_parameter``) naming it in
``param``; nothing is dropped silently. What is carried, and how:

- ``system`` (string or text blocks) becomes the first ``system`` message;
  ``user`` / ``assistant`` messages keep their role. One text block becomes a
  plain string, several become text parts. Images become ``image_url`` parts
  (a base64 source as a ``data:`` URL). ``tool_use`` blocks become the
  assistant's ``tool_calls`` (arguments: the input as a JSON string) and
  ``tool_result`` blocks become ``tool`` messages, placed before the rest of
  their user message (Anthropic requires them first anyway); their text
  blocks are joined with ``"\\n"`` and ``is_error`` is stated as an
  ``"Error: "`` prefix.
- ``max_tokens`` is sent as ``max_tokens`` by default: every OpenAI-compatible
  server reads it, while some (Ollama) silently ignore
  ``max_completion_tokens``. OpenAI's reasoning models reject ``max_tokens``;
  a deployment for them passes ``max_tokens_param="max_completion_tokens"``.
- ``cache_control`` (top level or on a block or tool) is accepted without
  being sent: it is a hint that changes cost and latency, never the output,
  and OpenAI caches prompt prefixes automatically. A ``cache_control`` that
  is not ``{"type": "ephemeral", "ttl"?}`` is refused.
- ``thinking: {"type": "disabled"}`` is the default and is accepted; any
  other ``thinking`` is refused, as are ``top_k``, ``service_tier``,
  ``container``, ``mcp_servers`` and every other top-level key not listed
  here, server tools, documents, search results, thinking blocks, citations,
  file image sources, images inside a tool result, and a final assistant
  message (prefill: Chat Completions cannot continue a message).
- A JSON ``null`` for an optional parameter counts as absent.

Responses: ``finish_reason`` ``stop`` -> ``end_turn`` (Chat Completions does
not say whether a stop sequence matched, so ``stop_sequence`` stays null),
``length`` -> ``max_tokens``, ``tool_calls`` / ``function_call`` ->
``tool_use``, ``content_filter`` (or a ``refusal`` from the model) ->
``refusal``. Usage: ``input_tokens`` = prompt tokens minus cached ones,
``cache_read_input_tokens`` = the cached ones (only when the upstream reports
them), ``output_tokens`` = completion tokens.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Final, Literal, NoReturn

from .._errors import LocalProtocolError, NetworkError, ValidationError, anthropic_type
from .._json import MAX_JSON_ITEMS, JSONError, loads
from .._render import anthropic_error_body
from .._sse import parse_block

__all__ = [
    "ChatStreamToMessages",
    "chat_response_to_messages",
    "messages_request_to_chat",
    "openai_error_to_anthropic",
]

_dumps = json.JSONEncoder(separators=(",", ":")).encode  # == json.dumps(o, separators=...)
_args_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


# --- errors ------------------------------------------------------------------


def _unsupported(param: str, why: str) -> NoReturn:
    raise ValidationError(f"{param}: {why}", code="unsupported_parameter", param=param)


def _invalid(param: str, why: str) -> NoReturn:
    raise ValidationError(f"{param}: {why}", param=param)


def _bad_upstream(why: str) -> NoReturn:
    raise NetworkError(
        f"upstream sent an invalid chat completion: {why}", code="upstream_protocol_error"
    )


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


# --- request -----------------------------------------------------------------

# Top-level keys with a translation below (None counts as absent for all but
# the required ones). Every other key is refused with a reason.
_REQUEST_KEYS: Final = frozenset(
    {
        "model",
        "messages",
        "max_tokens",
        "system",
        "stop_sequences",
        "stream",
        "temperature",
        "top_p",
        "metadata",
        "tools",
        "tool_choice",
        "cache_control",
        "thinking",
    }
)
_WHY_NOT: Final[dict[str, str]] = {
    "top_k": "OpenAI Chat Completions has no top_k sampling parameter",
    "thinking": "extended thinking cannot be translated to OpenAI Chat Completions",
    "service_tier": "Anthropic service tiers do not map to OpenAI's",
    "container": "code-execution containers are Anthropic-only",
    "mcp_servers": "the MCP connector is Anthropic-only",
    "context_management": "context management is Anthropic-only",
    "output_config": "output_config cannot be translated to OpenAI Chat Completions",
    "output_format": "output_format cannot be translated to OpenAI Chat Completions",
    "inference_geo": "inference_geo is Anthropic-only",
    "speed": "speed is Anthropic-only",
}
_CACHE_CONTROL_KEYS: Final = frozenset({"type", "ttl"})
_TEXT_KEYS: Final = frozenset({"type", "text", "cache_control", "citations"})
_IMAGE_KEYS: Final = frozenset({"type", "source", "cache_control"})
_TOOL_USE_KEYS: Final = frozenset({"type", "id", "name", "input", "cache_control"})
_TOOL_RESULT_KEYS: Final = frozenset(
    {"type", "tool_use_id", "content", "is_error", "cache_control"}
)
_TOOL_KEYS: Final = frozenset(
    {"type", "name", "description", "input_schema", "cache_control", "strict"}
)
_TOOL_CHOICES: Final[dict[str, str]] = {"auto": "auto", "any": "required", "none": "none"}


def _check_keys(block: Mapping[str, Any], allowed: frozenset[str], param: str, where: str) -> None:
    for key in block:
        if key not in allowed:
            _unsupported(param, f"{where}: field {key!r} cannot be translated")


def _check_cache_control(value: Any, param: str, where: str) -> None:
    if value is None:
        return
    if (
        not isinstance(value, dict)
        or value.get("type") != "ephemeral"
        or not _CACHE_CONTROL_KEYS.issuperset(value)
    ):
        _unsupported(param, f"{where}: only cache_control {{'type': 'ephemeral'}} is accepted")


def _str(value: Any, param: str, where: str) -> str:
    if not isinstance(value, str):
        _invalid(param, f"{where} must be a string")
    return value


def _list(value: Any, param: str, where: str) -> list[Any]:
    if not isinstance(value, list):
        _invalid(param, f"{where} must be an array")
    return value


def _block(value: Any, param: str, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        _invalid(param, f"{where} must be an object")
    return value


def _text(block: dict[str, Any], param: str, where: str) -> str:
    _check_keys(block, _TEXT_KEYS, param, where)
    _check_cache_control(block.get("cache_control"), param, where)
    if block.get("citations"):
        _unsupported(param, f"{where}: citations cannot be translated")
    return _str(block.get("text"), param, f"{where}.text")


def _text_content(texts: list[str]) -> str | list[dict[str, Any]]:
    if len(texts) == 1:
        return texts[0]
    return [{"type": "text", "text": t} for t in texts]


def _image_part(block: dict[str, Any], where: str) -> dict[str, Any]:
    _check_keys(block, _IMAGE_KEYS, "messages", where)
    _check_cache_control(block.get("cache_control"), "messages", where)
    source = _block(block.get("source"), "messages", f"{where}.source")
    kind = source.get("type")
    if kind == "base64":
        _check_keys(source, frozenset({"type", "media_type", "data"}), "messages", where)
        media_type = _str(source.get("media_type"), "messages", f"{where}.source.media_type")
        data = _str(source.get("data"), "messages", f"{where}.source.data")
        url = f"data:{media_type};base64,{data}"
    elif kind == "url":
        _check_keys(source, frozenset({"type", "url"}), "messages", where)
        url = _str(source.get("url"), "messages", f"{where}.source.url")
    else:
        _unsupported("messages", f"{where}: image source type {kind!r} cannot be translated")
    return {"type": "image_url", "image_url": {"url": url}}


def _tool_result(block: dict[str, Any], where: str) -> dict[str, Any]:
    _check_keys(block, _TOOL_RESULT_KEYS, "messages", where)
    _check_cache_control(block.get("cache_control"), "messages", where)
    tool_use_id = _str(block.get("tool_use_id"), "messages", f"{where}.tool_use_id")
    content = block.get("content")
    if content is None:
        text = ""
    elif isinstance(content, str):
        text = content
    else:
        texts = []
        for k, raw in enumerate(_list(content, "messages", f"{where}.content")):
            inner = f"{where}.content.{k}"
            item = _block(raw, "messages", inner)
            if item.get("type") != "text":
                _unsupported(
                    "messages",
                    f"{inner}: a {item.get('type')!r} block inside a tool_result cannot be"
                    " translated (OpenAI tool messages carry text only)",
                )
            texts.append(_text(item, "messages", inner))
        text = "\n".join(texts)
    is_error = block.get("is_error")
    if is_error is not None and not isinstance(is_error, bool):
        _invalid("messages", f"{where}.is_error must be a boolean")
    if is_error:
        text = f"Error: {text}" if text else "Error"
    return {"role": "tool", "tool_call_id": tool_use_id, "content": text}


def _tool_call(block: dict[str, Any], where: str) -> dict[str, Any]:
    _check_keys(block, _TOOL_USE_KEYS, "messages", where)
    _check_cache_control(block.get("cache_control"), "messages", where)
    tool_input = block.get("input")
    if not isinstance(tool_input, dict):
        _invalid("messages", f"{where}.input must be an object")
    return {
        "id": _str(block.get("id"), "messages", f"{where}.id"),
        "type": "function",
        "function": {
            "name": _str(block.get("name"), "messages", f"{where}.name"),
            "arguments": _args_dumps(tool_input),
        },
    }


def _unknown_block(kind: Any, where: str) -> NoReturn:
    _unsupported("messages", f"{where}: content block type {kind!r} cannot be translated")


def _user_messages(content: Any, where: str, out: list[dict[str, Any]]) -> None:
    if isinstance(content, str):
        out.append({"role": "user", "content": content})
        return
    blocks = _list(content, "messages", f"{where}.content")
    if not blocks:
        _invalid("messages", f"{where}.content must not be empty")
    parts: list[dict[str, Any]] = []
    all_text = True
    for j, raw in enumerate(blocks):
        at = f"{where}.content.{j}"
        block = _block(raw, "messages", at)
        kind = block.get("type")
        if kind == "text":
            parts.append({"type": "text", "text": _text(block, "messages", at)})
        elif kind == "image":
            parts.append(_image_part(block, at))
            all_text = False
        elif kind == "tool_result":
            out.append(_tool_result(block, at))
        else:
            _unknown_block(kind, at)
    if parts:
        if all_text and len(parts) == 1:
            out.append({"role": "user", "content": parts[0]["text"]})
        else:
            out.append({"role": "user", "content": parts})


def _assistant_message(content: Any, where: str) -> dict[str, Any]:
    if isinstance(content, str):
        return {"role": "assistant", "content": content}
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for j, raw in enumerate(_list(content, "messages", f"{where}.content")):
        at = f"{where}.content.{j}"
        block = _block(raw, "messages", at)
        kind = block.get("type")
        if kind == "text":
            texts.append(_text(block, "messages", at))
        elif kind == "tool_use":
            calls.append(_tool_call(block, at))
        else:
            _unknown_block(kind, at)
    message: dict[str, Any] = {
        "role": "assistant",
        "content": _text_content(texts) if texts else None,
    }
    if calls:
        message["tool_calls"] = calls
    return message


def _is_empty(content: Any) -> bool:
    return isinstance(content, str | list) and not content


def _convert_messages(raw: Any, out: list[dict[str, Any]]) -> None:
    messages = _list(raw, "messages", "messages")
    if not messages:
        _invalid("messages", "at least one message is required")
    last = len(messages) - 1
    for i, item in enumerate(messages):
        where = f"messages.{i}"
        message = _block(item, "messages", where)
        for key in message:
            if key not in ("role", "content"):
                _unsupported("messages", f"{where}: field {key!r} cannot be translated")
        role = message.get("role")
        content = message.get("content")
        if role == "user":
            _user_messages(content, where, out)
        elif role == "assistant":
            if i == last:
                if _is_empty(content):
                    continue  # an empty final assistant turn asks for nothing
                _unsupported(
                    "messages",
                    f"{where}: a final assistant message (prefill) cannot be translated;"
                    " OpenAI Chat Completions does not continue a message",
                )
            if _is_empty(content):
                _invalid("messages", f"{where}.content must not be empty")
            out.append(_assistant_message(content, where))
        else:
            _invalid("messages", f"{where}.role must be 'user' or 'assistant'")


def _system_message(system: Any) -> dict[str, Any] | None:
    if isinstance(system, str):
        return {"role": "system", "content": system} if system else None
    texts = []
    for j, raw in enumerate(_list(system, "system", "system")):
        at = f"system.{j}"
        block = _block(raw, "system", at)
        if block.get("type") != "text":
            _unsupported("system", f"{at}: system block type {block.get('type')!r} is not text")
        texts.append(_text(block, "system", at))
    return {"role": "system", "content": _text_content(texts)} if texts else None


def _tools(raw: Any) -> list[dict[str, Any]]:
    tools = []
    for k, item in enumerate(_list(raw, "tools", "tools")):
        at = f"tools.{k}"
        tool = _block(item, "tools", at)
        kind = tool.get("type")
        if kind not in (None, "custom"):
            _unsupported("tools", f"{at}: server tool {kind!r} cannot be translated")
        _check_keys(tool, _TOOL_KEYS, "tools", at)
        _check_cache_control(tool.get("cache_control"), "tools", at)
        schema = tool.get("input_schema")
        if not isinstance(schema, dict):
            _invalid("tools", f"{at}.input_schema must be an object")
        function: dict[str, Any] = {"name": _str(tool.get("name"), "tools", f"{at}.name")}
        description = tool.get("description")
        if description is not None:
            function["description"] = _str(description, "tools", f"{at}.description")
        function["parameters"] = schema
        strict = tool.get("strict")
        if strict is not None:
            if not isinstance(strict, bool):
                _invalid("tools", f"{at}.strict must be a boolean")
            function["strict"] = strict
        tools.append({"type": "function", "function": function})
    return tools


def _tool_choice(raw: Any, chat: dict[str, Any]) -> None:
    choice = _block(raw, "tool_choice", "tool_choice")
    kind = choice.get("type")
    allowed = {"type", "disable_parallel_tool_use"}
    if kind == "tool":
        allowed.add("name")
        name = _str(choice.get("name"), "tool_choice", "tool_choice.name")
        chat["tool_choice"] = {"type": "function", "function": {"name": name}}
    elif kind in _TOOL_CHOICES:
        chat["tool_choice"] = _TOOL_CHOICES[kind]
        if kind == "none":
            allowed.discard("disable_parallel_tool_use")
    else:
        _invalid("tool_choice", f"tool_choice.type {kind!r} is not auto, any, tool or none")
    for key in choice:
        if key not in allowed:
            _unsupported("tool_choice", f"field {key!r} cannot be translated")
    disable = choice.get("disable_parallel_tool_use")
    if disable is not None:
        if not isinstance(disable, bool):
            _invalid("tool_choice", "disable_parallel_tool_use must be a boolean")
        if disable:
            chat["parallel_tool_calls"] = False


def _number(value: Any, param: str) -> float | int:
    if isinstance(value, bool) or not isinstance(value, int | float):
        _invalid(param, "must be a number")
    return value


def messages_request_to_chat(
    body: Mapping[str, Any],
    *,
    model: str,
    max_tokens_param: Literal["max_tokens", "max_completion_tokens"] = "max_tokens",
) -> dict[str, Any]:
    """Translate a parsed Anthropic Messages request into an OpenAI chat request.

    ``model`` is the deployment's upstream model name. Raises
    ``RemoteProtocolError`` (400) for a request that is malformed or asks for
    something Chat Completions cannot do, naming the parameter in ``param``.
    """
    if not isinstance(body, Mapping):
        _invalid("body", "the request body must be a JSON object")
    for key, value in body.items():
        if key not in _REQUEST_KEYS and value is not None:
            _unsupported(key, _WHY_NOT.get(key, "cannot be translated to OpenAI Chat Completions"))
    messages: list[dict[str, Any]] = []
    system = body.get("system")
    if system is not None:
        first = _system_message(system)
        if first is not None:
            messages.append(first)
    _convert_messages(body.get("messages"), messages)
    chat: dict[str, Any] = {"model": model, "messages": messages}

    max_tokens = body.get("max_tokens")
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int):
        _invalid("max_tokens", "an integer is required")
    chat[max_tokens_param] = max_tokens
    stop = body.get("stop_sequences")
    if stop is not None:
        stop = _list(stop, "stop_sequences", "stop_sequences")
        for k, item in enumerate(stop):
            _str(item, "stop_sequences", f"stop_sequences.{k}")
        if stop:
            chat["stop"] = stop
    for key in ("temperature", "top_p"):
        value = body.get(key)
        if value is not None:
            chat[key] = _number(value, key)
    metadata = body.get("metadata")
    if metadata is not None:
        metadata = _block(metadata, "metadata", "metadata")
        for key, value in metadata.items():
            if key != "user_id" and value is not None:
                _unsupported("metadata", f"metadata.{key} cannot be translated")
        user_id = metadata.get("user_id")
        if user_id is not None:
            chat["user"] = _str(user_id, "metadata", "metadata.user_id")
    tools = body.get("tools")
    if tools is not None:
        converted = _tools(tools)
        if converted:  # OpenAI refuses an empty list; Anthropic reads it as no tools
            chat["tools"] = converted
    tool_choice = body.get("tool_choice")
    if tool_choice is not None:
        _tool_choice(tool_choice, chat)
    _check_cache_control(body.get("cache_control"), "cache_control", "cache_control")
    thinking = body.get("thinking")
    if thinking is not None and thinking != {"type": "disabled"}:
        _unsupported("thinking", _WHY_NOT["thinking"])
    stream = body.get("stream")
    if stream is not None:
        if not isinstance(stream, bool):
            _invalid("stream", "must be a boolean")
        if stream:
            chat["stream"] = True
            chat["stream_options"] = {"include_usage": True}
    return chat


# --- response ----------------------------------------------------------------

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


# --- stream ------------------------------------------------------------------

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
    return b"event: " + kind.encode() + b"\ndata: " + _dumps(payload).encode() + b"\n\n"


def _error_event(message: str) -> bytes:
    return _event("error", {"type": "error", "error": {"type": "api_error", "message": message}})


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
        return [_error_event("upstream stream ended before the message was complete")]

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
        out.append(self._delta + json.dumps(text).encode() + _DELTA_END)

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
                out.append(self._delta + json.dumps(arguments).encode() + _DELTA_END)

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
        out.append(_error_event(message))
        return out
