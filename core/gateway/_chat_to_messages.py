"""Translation: an OpenAI Chat Completions client in front of an Anthropic Messages upstream.

Pure functions and one incremental stream translator, no I/O:

- :func:`chat_request_to_messages` -- a ``/v1/chat/completions`` body to a
  ``/v1/messages`` body;
- :func:`messages_response_to_chat` -- an Anthropic ``message`` to a ``chat.completion``;
- :func:`anthropic_error_to_openai` -- an Anthropic error body to OpenAI's error shape;
- :class:`MessagesStreamToChat` -- Anthropic stream events to ``chat.completion.chunk``
  events ending in ``data: [DONE]``.

The wire formats follow the providers' references: OpenAI's chat completion
request, object and chunk; Anthropic's Messages request, message object,
streaming events and error shapes.

Requests: nothing is dropped silently. A parameter with no Anthropic equivalent
is refused (400, ``param`` naming it) unless it holds its default value (``n: 1``,
``logprobs: false``, ``frequency_penalty: 0`` ...), which carries no meaning.
An unknown top-level key is refused too, as OpenAI does.

Responses and streams: Anthropic ``thinking`` and ``redacted_thinking`` blocks (and
their ``thinking_delta``/``signature_delta`` deltas) have no place in a chat
completion and are left out, as are ``citations_delta`` deltas and block or event
types this module does not know (Anthropic's versioning policy says new ones may
appear and should be ignored). Text blocks are joined with no separator, in the
stream as in the whole response.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from .._errors import NetworkError, RemoteProtocolError, ValidationError
from .._json import MAX_JSON_ITEMS, JSONError, loads
from .._render import openai_error_body, openai_error_event
from .._sse import parse_block

__all__ = [
    "MessagesStreamToChat",
    "anthropic_error_to_openai",
    "chat_request_to_messages",
    "messages_response_to_chat",
]

_COMPACT = (",", ":")

# --- errors ------------------------------------------------------------------


def _refuse(param: str, message: str) -> RemoteProtocolError:
    """A parameter of the OpenAI API that cannot be carried to Anthropic."""
    return ValidationError(message, code="unsupported_parameter", param=param)


def _invalid(param: str, message: str, *, code: str = "invalid_value") -> RemoteProtocolError:
    """A value the client should not have sent (or that Anthropic cannot take)."""
    return ValidationError(message, code=code, param=param)


def _bad_message(index: int, message: str, *, code: str = "invalid_value") -> RemoteProtocolError:
    return _invalid("messages", f"messages[{index}]: {message}", code=code)


def _upstream(message: str) -> RemoteProtocolError:
    """The upstream sent something that is not the Anthropic Messages API."""
    return NetworkError(f"malformed Anthropic response: {message}", code="upstream_protocol_error")


# --- request: OpenAI chat -> Anthropic messages -------------------------------

# Parameters Anthropic has no equivalent for, and the values that mean "not used"
# (besides null, which always means "not used"). Any other value is refused.
_DEFAULT_ONLY: dict[str, tuple[object, ...]] = {
    "n": (1,),
    "logprobs": (False,),
    "top_logprobs": (0,),
    "logit_bias": ({},),
    "frequency_penalty": (0,),
    "presence_penalty": (0,),
    "seed": (),
    "service_tier": (),
    "functions": ([],),
    "function_call": ("none",),
    "audio": (),
    "modalities": (["text"],),
    "prediction": (),
    "store": (False,),
    "metadata": ({},),
    "reasoning_effort": (),
    "verbosity": (),
    "web_search_options": (),
    "prompt_cache_key": (),
    "prompt_cache_retention": (),
    "prompt_cache_options": (),
    "moderation": (),
}

_HANDLED = frozenset(
    {
        "model",
        "messages",
        "stream",
        "stream_options",
        "max_tokens",
        "max_completion_tokens",
        "temperature",
        "top_p",
        "stop",
        "user",
        "safety_identifier",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "response_format",
    }
)

_IMAGE_MEDIA_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})

_SYSTEM_KEYS = frozenset({"role", "content"})
_USER_KEYS = frozenset({"role", "content"})
# "annotations" is not a request field, but a replayed response message carries it.
_ASSISTANT_KEYS = frozenset({"role", "content", "tool_calls", "annotations"})
_TOOL_KEYS = frozenset({"role", "content", "tool_call_id"})
_NOT_CARRIED = frozenset({"name", "refusal", "function_call", "audio"})


def _is_number(value: object) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)  # json.loads accepts NaN and Infinity
    )


def _is_default(value: object, defaults: tuple[object, ...]) -> bool:
    for default in defaults:
        # bool is an int in Python, and True == 1: compare kinds as well as values.
        if isinstance(value, bool) is isinstance(default, bool) and value == default:
            return True
    return False


def _check_keys(index: int, message: Mapping[str, Any], allowed: frozenset[str]) -> None:
    for key, value in message.items():
        if key in allowed:
            continue
        if value is None:
            continue
        role = message.get("role")
        if key in _NOT_CARRIED:
            raise _bad_message(
                index, f"{key!r} on a {role} message cannot be carried", code="unsupported_value"
            )
        raise _bad_message(index, f"unknown field {key!r}", code="unsupported_value")


def _text_of(index: int, part: object) -> str:
    """The text of a ``{"type": "text", "text": ...}`` part."""
    if not isinstance(part, Mapping):
        raise _bad_message(index, "content parts must be objects")
    kind = part.get("type")
    if kind != "text":
        raise _bad_message(
            index, f"content part type {kind!r} is not supported here", code="unsupported_value"
        )
    for key in part:
        if key not in ("type", "text"):
            raise _bad_message(
                index, f"unknown field {key!r} in a text part", code="unsupported_value"
            )
    text = part.get("text")
    if not isinstance(text, str):
        raise _bad_message(index, "a text part needs a string 'text'")
    return text


def _texts(index: int, content: object) -> list[str]:
    """The non-empty texts of a string or a list of text parts."""
    if isinstance(content, str):
        return [content] if content else []
    if isinstance(content, list):
        texts = [_text_of(index, part) for part in content]
        return [text for text in texts if text]
    raise _bad_message(index, "content must be a string or a list of parts")


def _image_block(index: int, part: Mapping[str, Any]) -> dict[str, Any]:
    for key in part:
        if key not in ("type", "image_url"):
            raise _bad_message(
                index, f"unknown field {key!r} in an image_url part", code="unsupported_value"
            )
    image = part.get("image_url")
    if not isinstance(image, Mapping) or not isinstance(image.get("url"), str):
        raise _bad_message(index, "an image_url part needs an object with a string 'url'")
    for key, value in image.items():
        if key == "url":
            continue
        if key == "detail":
            if value is None or value == "auto":
                continue
            raise _bad_message(
                index, f"image detail {value!r} cannot be carried", code="unsupported_value"
            )
        raise _bad_message(index, f"unknown field {key!r} in image_url", code="unsupported_value")
    url: str = image["url"]
    if url.startswith("data:"):
        header, comma, data = url[5:].partition(",")
        media_type, _, encoding = header.partition(";")
        if not comma or encoding != "base64":
            raise _bad_message(index, "a data: image URL must be base64 (data:<type>;base64,...)")
        if media_type not in _IMAGE_MEDIA_TYPES:
            raise _bad_message(
                index,
                f"image type {media_type!r} is not supported (jpeg, png, gif or webp)",
                code="unsupported_value",
            )
        source = {"type": "base64", "media_type": media_type, "data": data}
    elif url.startswith(("https://", "http://")):
        source = {"type": "url", "url": url}
    else:
        raise _bad_message(index, "an image URL must be http(s) or a base64 data: URL")
    return {"type": "image", "source": source}


def _user_blocks(index: int, content: object) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    if not isinstance(content, list):
        raise _bad_message(index, "content must be a string or a list of parts")
    blocks: list[dict[str, Any]] = []
    for part in content:
        if isinstance(part, Mapping) and part.get("type") == "image_url":
            blocks.append(_image_block(index, part))
            continue
        text = _text_of(index, part)
        if text:
            blocks.append({"type": "text", "text": text})
    return blocks


def _tool_use_block(index: int, call: object, max_items: int) -> dict[str, Any]:
    if not isinstance(call, Mapping):
        raise _bad_message(index, "tool_calls entries must be objects")
    kind = call.get("type")
    if kind != "function":
        raise _bad_message(
            index, f"tool call type {kind!r} cannot be carried", code="unsupported_value"
        )
    for key in call:
        if key not in ("id", "type", "function"):
            raise _bad_message(
                index, f"unknown field {key!r} in a tool call", code="unsupported_value"
            )
    call_id = call.get("id")
    function = call.get("function")
    if not isinstance(call_id, str) or not isinstance(function, Mapping):
        raise _bad_message(index, "a tool call needs a string 'id' and a 'function' object")
    name = function.get("name")
    arguments = function.get("arguments")
    if not isinstance(name, str) or not isinstance(arguments, str):
        raise _bad_message(index, "a tool call function needs string 'name' and 'arguments'")
    if arguments.strip():
        try:
            tool_input = loads(arguments, max_items=max_items)
        except JSONError as exc:
            why = "" if exc.limit is None else f": {exc}"
            raise _bad_message(
                index, f"the arguments of tool call {call_id!r} are not valid JSON{why}"
            ) from None
    else:  # a streamed call to a tool without parameters may carry no arguments at all
        tool_input = {}
    if not isinstance(tool_input, dict):
        raise _bad_message(index, f"the arguments of tool call {call_id!r} must be a JSON object")
    return {"type": "tool_use", "id": call_id, "name": name, "input": tool_input}


def _assistant_blocks(
    index: int, message: Mapping[str, Any], max_items: int
) -> list[dict[str, Any]]:
    content = message.get("content")
    blocks: list[dict[str, Any]] = []
    if content is not None:
        blocks.extend({"type": "text", "text": text} for text in _texts(index, content))
    tool_calls = message.get("tool_calls")
    if tool_calls is not None:
        if not isinstance(tool_calls, list):
            raise _bad_message(index, "tool_calls must be a list")
        blocks.extend(_tool_use_block(index, call, max_items) for call in tool_calls)
    return blocks


def _tool_result_block(index: int, message: Mapping[str, Any]) -> dict[str, Any]:
    tool_call_id = message.get("tool_call_id")
    if not isinstance(tool_call_id, str):
        raise _bad_message(index, "a tool message needs a string 'tool_call_id'")
    block: dict[str, Any] = {"type": "tool_result", "tool_use_id": tool_call_id}
    content = message.get("content")
    if isinstance(content, str):
        if content:
            block["content"] = content
    else:
        texts = _texts(index, content)
        if texts:
            block["content"] = [{"type": "text", "text": text} for text in texts]
    return block


def _convert_messages(messages: object, max_items: int) -> tuple[list[str], list[dict[str, Any]]]:
    """System texts, and the user/assistant turns (same-role messages merged)."""
    if not isinstance(messages, list):
        raise _invalid("messages", "messages must be a list")
    system: list[str] = []
    turns: list[dict[str, Any]] = []
    for index, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise _bad_message(index, "a message must be an object")
        role = message.get("role")
        if role in ("system", "developer"):
            _check_keys(index, message, _SYSTEM_KEYS)
            system.extend(_texts(index, message.get("content")))
            continue
        if role == "user":
            _check_keys(index, message, _USER_KEYS)
            blocks = _user_blocks(index, message.get("content"))
        elif role == "assistant":
            _check_keys(index, message, _ASSISTANT_KEYS)
            blocks = _assistant_blocks(index, message, max_items)
        elif role == "tool":
            _check_keys(index, message, _TOOL_KEYS)
            role = "user"
            blocks = [_tool_result_block(index, message)]
        elif role == "function":
            raise _bad_message(
                index, "function messages (deprecated) cannot be carried", code="unsupported_value"
            )
        else:
            raise _bad_message(index, f"unknown role {role!r}")
        if not blocks:  # an empty message says nothing; Anthropic refuses empty content
            continue
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})
    if not turns:
        raise _invalid("messages", "messages must hold at least one non-empty user message")
    if turns[0]["role"] != "user":
        raise _invalid(
            "messages", "the first message after the system messages must be a user message"
        )
    for turn in turns:
        content = turn["content"]
        if len(content) == 1 and content[0]["type"] == "text":
            turn["content"] = content[0]["text"]
    return system, turns


def _convert_tools(tools: object) -> list[dict[str, Any]]:
    if not isinstance(tools, list):
        raise _invalid("tools", "tools must be a list")
    out: list[dict[str, Any]] = []
    for tool in tools:
        if not isinstance(tool, Mapping):
            raise _invalid("tools", "each tool must be an object")
        kind = tool.get("type")
        if kind != "function":
            raise _refuse("tools", f"tools of type {kind!r} cannot be carried")
        function = tool.get("function")
        if not isinstance(function, Mapping) or not isinstance(function.get("name"), str):
            raise _invalid("tools", "a function tool needs a 'function' with a string 'name'")
        for key in tool:
            if key not in ("type", "function"):
                raise _refuse("tools", f"unknown field {key!r} in a tool")
        converted: dict[str, Any] = {"name": function["name"]}
        for key, value in function.items():
            if key == "name" or value is None:
                continue
            if key == "description":
                if not isinstance(value, str):
                    raise _invalid("tools", "a function description must be a string")
                converted["description"] = value
            elif key == "parameters":
                if not isinstance(value, Mapping):
                    raise _invalid("tools", "function parameters must be an object")
                if value:
                    converted["input_schema"] = dict(value)
            elif key == "strict":
                if not isinstance(value, bool):
                    raise _invalid("tools", "function strict must be a boolean")
                if value:
                    converted["strict"] = True
            else:
                raise _refuse("tools", f"unknown field {key!r} in a function")
        # OpenAI: "omitting parameters defines a function with an empty parameter list".
        converted.setdefault("input_schema", {"type": "object", "properties": {}})
        out.append(converted)
    return out


def _convert_tool_choice(choice: object) -> dict[str, Any]:
    if choice == "auto":
        return {"type": "auto"}
    if choice == "none":
        return {"type": "none"}
    if choice == "required":
        return {"type": "any"}
    if isinstance(choice, Mapping):
        kind = choice.get("type")
        if kind == "function":
            function = choice.get("function")
            if not isinstance(function, Mapping) or not isinstance(function.get("name"), str):
                raise _invalid("tool_choice", "tool_choice.function needs a string 'name'")
            return {"type": "tool", "name": function["name"]}
        if kind in ("allowed_tools", "custom"):
            raise _refuse("tool_choice", f"tool_choice of type {kind!r} cannot be carried")
    raise _invalid("tool_choice", "tool_choice must be auto, none, required or a function")


def _max_tokens(body: Mapping[str, Any], default: int) -> int:
    chosen: int | None = None
    for name in ("max_completion_tokens", "max_tokens"):
        value = body.get(name)
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise _invalid(name, f"{name} must be an integer of at least 1")
        if chosen is not None and value != chosen:
            raise _invalid(name, "max_tokens and max_completion_tokens disagree")
        chosen = value
    return default if chosen is None else chosen


def _response_format(value: object) -> dict[str, Any] | None:
    """Anthropic's ``output_config`` for an OpenAI ``response_format``, if any."""
    if not isinstance(value, Mapping):
        raise _invalid("response_format", "response_format must be an object")
    kind = value.get("type")
    if kind == "text":
        return None
    if kind == "json_schema":
        spec = value.get("json_schema")
        if not isinstance(spec, Mapping) or not isinstance(spec.get("schema"), Mapping):
            raise _invalid("response_format", "json_schema needs a 'schema' object")
        for key, item in spec.items():
            if key in ("name", "schema", "strict") or item is None:
                continue
            raise _refuse("response_format", f"json_schema.{key} cannot be carried")
        return {"format": {"type": "json_schema", "schema": dict(spec["schema"])}}
    if kind == "json_object":
        raise _refuse("response_format", "JSON mode without a schema cannot be carried")
    raise _invalid("response_format", f"unknown response_format type {kind!r}")


def chat_request_to_messages(
    body: Mapping[str, Any],
    *,
    model: str,
    default_max_tokens: int = 4096,
    max_json_items: int = MAX_JSON_ITEMS,
) -> dict[str, Any]:
    """Translate an OpenAI chat completion request into an Anthropic Messages request.

    ``model`` is the upstream model name; ``default_max_tokens`` is used when the
    client sets neither ``max_tokens`` nor ``max_completion_tokens`` (Anthropic
    requires one); ``max_json_items`` bounds the tool calls' arguments (JSON
    in a string). Raises ``RemoteProtocolError`` (400) naming the parameter
    that cannot be translated.
    """
    if not isinstance(body, Mapping):
        raise ValidationError("the request body must be a JSON object")
    for name, value in body.items():
        if name in _HANDLED or value is None:
            continue
        defaults = _DEFAULT_ONLY.get(name)
        if defaults is None:
            raise _invalid(name, f"unknown parameter {name!r}", code="unknown_parameter")
        if not _is_default(value, defaults):
            raise _refuse(name, f"{name} cannot be carried to an Anthropic model")

    system, turns = _convert_messages(body.get("messages"), max_json_items)
    out: dict[str, Any] = {"model": model, "max_tokens": _max_tokens(body, default_max_tokens)}
    if system:
        out["system"] = (
            system[0] if len(system) == 1 else [{"type": "text", "text": text} for text in system]
        )
    out["messages"] = turns

    stop = body.get("stop")
    if isinstance(stop, str):
        out["stop_sequences"] = [stop]
    elif isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        if stop:
            out["stop_sequences"] = list(stop)
    elif stop is not None:
        raise _invalid("stop", "stop must be a string or a list of strings")

    temperature = body.get("temperature")
    if temperature is not None:
        if not _is_number(temperature) or not 0 <= temperature <= 2:
            raise _invalid("temperature", "temperature must be a number from 0 to 2")
        if temperature > 1:
            raise _invalid(
                "temperature",
                "temperature above 1 cannot be carried (Anthropic's range is 0 to 1)",
                code="unsupported_value",
            )
        out["temperature"] = temperature
    top_p = body.get("top_p")
    if top_p is not None:
        if not _is_number(top_p) or not 0 <= top_p <= 1:
            raise _invalid("top_p", "top_p must be a number from 0 to 1")
        out["top_p"] = top_p

    user_id: str | None = None
    for name in ("user", "safety_identifier"):
        value = body.get(name)
        if value is None:
            continue
        if not isinstance(value, str):
            raise _invalid(name, f"{name} must be a string")
        if user_id is not None and value != user_id:
            raise _invalid(name, "user and safety_identifier disagree")
        user_id = value
    if user_id is not None:
        out["metadata"] = {"user_id": user_id}

    tools = body.get("tools")
    converted_tools = _convert_tools(tools) if tools is not None else []
    if converted_tools:
        out["tools"] = converted_tools
    choice_value = body.get("tool_choice")
    choice = _convert_tool_choice(choice_value) if choice_value is not None else None
    parallel = body.get("parallel_tool_calls")
    if parallel is not None and not isinstance(parallel, bool):
        raise _invalid("parallel_tool_calls", "parallel_tool_calls must be a boolean")
    if converted_tools:
        if parallel is False and (choice is None or choice["type"] != "none"):
            choice = {"type": "auto"} if choice is None else choice
            choice["disable_parallel_tool_use"] = True
        if choice is not None:
            out["tool_choice"] = choice
    elif choice is not None and choice["type"] not in ("auto", "none"):
        # Without tools, "auto" and "none" both mean no tool call: nothing to carry.
        raise _invalid("tool_choice", "tool_choice names a tool but there are no tools")

    response_format = body.get("response_format")
    if response_format is not None:
        output_config = _response_format(response_format)
        if output_config is not None:
            out["output_config"] = output_config

    stream = body.get("stream")
    if stream is not None:
        if not isinstance(stream, bool):
            raise _invalid("stream", "stream must be a boolean")
        out["stream"] = stream
    stream_options = body.get("stream_options")
    if stream_options is not None:
        # Anthropic streams always report usage: nothing to carry. Checked all the same.
        if not isinstance(stream_options, Mapping):
            raise _invalid("stream_options", "stream_options must be an object")
        for key, value in stream_options.items():
            if key not in ("include_usage", "include_obfuscation"):
                raise _refuse("stream_options", f"stream_options.{key} cannot be carried")
            if value is not None and not isinstance(value, bool):
                raise _invalid("stream_options", f"stream_options.{key} must be a boolean")
    return out


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
            arguments = json.dumps(tool_input, separators=_COMPACT, ensure_ascii=False)
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
        head = json.dumps(
            {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "system_fingerprint": None,
            },
            separators=_COMPACT,
        )
        self._head = b"data: " + head[:-1].encode()
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
        if self._state == _ENDED:
            return []  # the client already had [DONE] or an error: nothing can follow
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
                return [self._chunk(b'{"content":' + json.dumps(text).encode() + b"}")]
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
                        % (call, json.dumps(partial).encode())
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
                encoded = json.dumps(usage, separators=_COMPACT).encode()
                out.append(self._head + b',"choices":[],"usage":' + encoded + b"}\n\n")
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
                return [self._chunk(b'{"content":' + json.dumps(text).encode() + b"}")]
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
            return [self._chunk(json.dumps(start, separators=_COMPACT).encode())]
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
