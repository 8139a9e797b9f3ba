"""The request, Anthropic -> OpenAI: a Messages body to a Chat Completions body.

:func:`messages_request_to_chat` turns a parsed ``POST /v1/messages`` request
into the chat request an OpenAI-compatible upstream reads (pure, no I/O). The
wire formats follow the providers' references: Anthropic's Messages API
request and OpenAI's Chat Completions request. What comes back goes the other
way in :mod:`._chat_response_to_messages`.

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
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final, Literal, NoReturn

from .._errors import ValidationError
from .._json import dumps

__all__ = ["messages_request_to_chat"]

# --- errors ------------------------------------------------------------------


def _unsupported(param: str, why: str) -> NoReturn:
    raise ValidationError(f"{param}: {why}", code="unsupported_parameter", param=param)


def _invalid(param: str, why: str) -> NoReturn:
    raise ValidationError(f"{param}: {why}", param=param)


# --- request: Anthropic messages -> OpenAI chat ------------------------------

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
            "arguments": dumps(tool_input).decode(),
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
