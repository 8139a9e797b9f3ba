"""The request, OpenAI -> Anthropic: a Chat Completions body to a Messages body.

:func:`chat_request_to_messages` turns a ``/v1/chat/completions`` request into
the ``/v1/messages`` request an Anthropic upstream reads (pure, no I/O). The
wire formats follow the providers' references: OpenAI's chat completion
request, Anthropic's Messages request. What comes back goes the other way in
:mod:`._messages_response_to_chat`.

Nothing is dropped silently: every refusal is a ``RemoteProtocolError`` (400,
``invalid_request_error``) naming the parameter in ``param``. Refused:

- a parameter with no Anthropic equivalent (code ``unsupported_parameter``)
  unless it holds its default value (``n: 1``, ``logprobs: false``,
  ``frequency_penalty: 0`` ...), which carries no meaning;
- an unknown top-level key (``unknown_parameter``), as OpenAI does;
- what a message, tool or option holds that Anthropic cannot take
  (``unsupported_value``): ``name`` or ``refusal`` on a message, function
  messages, non-function tools and tool calls, image types other than jpeg,
  png, gif and webp, an image ``detail`` other than ``auto``, a
  ``temperature`` above 1, JSON mode without a schema;
- a malformed value (``invalid_value``), such as tool-call arguments that are
  not a JSON object.

A JSON ``null`` for an optional parameter counts as absent.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from .._errors import RemoteProtocolError, ValidationError
from .._json import MAX_JSON_ITEMS, JSONError, loads

__all__ = ["chat_request_to_messages"]

# --- errors ------------------------------------------------------------------


def _refuse(param: str, message: str) -> RemoteProtocolError:
    """A parameter of the OpenAI API that cannot be carried to Anthropic."""
    return ValidationError(message, code="unsupported_parameter", param=param)


def _invalid(param: str, message: str, *, code: str = "invalid_value") -> RemoteProtocolError:
    """A value the client should not have sent (or that Anthropic cannot take)."""
    return ValidationError(message, code=code, param=param)


def _bad_message(index: int, message: str, *, code: str = "invalid_value") -> RemoteProtocolError:
    return _invalid("messages", f"messages[{index}]: {message}", code=code)


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


def _check_fields(
    index: int, part: Mapping[str, Any], allowed: tuple[str, ...], where: str
) -> None:
    """Refuse a field of ``part`` (``where``: "a text part" ...) that is not ``allowed``."""
    for key in part:
        if key not in allowed:
            raise _bad_message(index, f"unknown field {key!r} in {where}", code="unsupported_value")


def _text_of(index: int, part: object) -> str:
    """The text of a ``{"type": "text", "text": ...}`` part."""
    if not isinstance(part, Mapping):
        raise _bad_message(index, "content parts must be objects")
    kind = part.get("type")
    if kind != "text":
        raise _bad_message(
            index, f"content part type {kind!r} is not supported here", code="unsupported_value"
        )
    _check_fields(index, part, ("type", "text"), "a text part")
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
    _check_fields(index, part, ("type", "image_url"), "an image_url part")
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
    _check_fields(index, call, ("id", "type", "function"), "a tool call")
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
