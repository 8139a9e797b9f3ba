"""What a request asks, as the record of its exchange keeps it.

``RequestParams`` reads the parameters observers record (model, stream,
max_tokens, temperature, top_p, user) from the body the router parsed, once,
and the input messages when ``telemetry.capture_content`` asks for them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

__all__ = ["NO_VALUES", "RequestParams"]


# What a request asks, as __init__ reads it (in the order RequestParams.values uses):
# model, stream, max_tokens, max_completion_tokens, max_output_tokens, temperature,
# top_p, user; none of them.
_NO_PARAMS: Final = (None,) * 8
_SCALARS: Final = frozenset({type(None), bool, int, float, str})
_USER_MAX: Final = 256


class RequestParams:
    """What the request asks, as observers record it: read once from the parsed body.

    On the response path only the raw values are taken (one lookup each, in C);
    ``values()`` checks them when the record is built, off it. Only scalars are
    kept (a client's list or object in their place is None), and the user cut
    to 256 characters: what waits in the sinks' queues is small.
    """

    __slots__ = ("input_messages", "raw")

    def __init__(self, body: Mapping[str, Any] | None, *, capture: bool) -> None:
        if not body:
            self.raw: tuple[Any, ...] = _NO_PARAMS
            self.input_messages = None
            return
        get = body.get  # a lookup each: cheaper than map() over the names
        raw: tuple[Any, ...] = (
            get("model"),
            get("stream"),
            get("max_tokens"),
            get("max_completion_tokens"),
            get("max_output_tokens"),
            get("temperature"),
            get("top_p"),
            get("user"),
        )
        if type(raw[7]) is not str:  # no user: Anthropic's metadata.user_id, then
            metadata = body.get("metadata")
            if type(metadata) is dict:
                raw = (*raw[:7], metadata.get("user_id"))
        if not _SCALARS.issuperset(map(type, raw)):  # a list or an object: not kept
            raw = tuple(value if type(value) in _SCALARS else None for value in raw)
        user = raw[7]
        if type(user) is str and len(user) > _USER_MAX:
            raw = (*raw[:7], user[:_USER_MAX])
        self.raw = raw
        self.input_messages = _input_messages(body) if capture else None

    @classmethod
    def asking(cls, body: Mapping[str, Any] | None) -> RequestParams:
        """Only the model asked for (what the record needs when no span shows the rest)."""
        params = object.__new__(cls)
        params.input_messages = None
        if not body:
            params.raw = _NO_PARAMS
        else:
            model = body.get("model")
            params.raw = (model if type(model) is str else None, *_NO_PARAMS[1:])
        return params

    @property
    def model(self) -> str | None:
        """The model asked for (a non-empty string), or None."""
        model = self.raw[0]
        return model if type(model) is str and model else None

    def values(
        self,
    ) -> tuple[str | None, bool, int | None, float | None, float | None, str | None]:
        """``(model, stream, max_tokens, temperature, top_p, user)``, checked: an int
        is an ``int`` (not a ``bool``), a number an ``int`` or ``float``, a string
        non-empty (a user cut to 256 characters)."""
        model, stream, tokens, completion, output, temperature, top_p, user = self.raw
        if type(tokens) is not int:
            tokens = completion if type(completion) is int else output
        return (
            model if type(model) is str and model else None,
            stream is True,
            tokens if type(tokens) is int else None,
            float(temperature) if type(temperature) in _NUMBERS else None,
            float(top_p) if type(top_p) in _NUMBERS else None,
            user if type(user) is str and user else None,
        )


_NUMBERS: Final = (int, float)
NO_VALUES: Final = (None, False, None, None, None, None)


def _parts(content: object) -> list[dict[str, Any]]:
    """A message's content as OpenTelemetry GenAI message parts."""
    if isinstance(content, str):
        return [{"type": "text", "content": content}]
    parts: list[dict[str, Any]] = []
    if isinstance(content, list):
        for block in content:
            if isinstance(block, dict) and isinstance(block.get("text"), str):
                parts.append({"type": "text", "content": block["text"]})
            elif isinstance(block, dict):
                parts.append({"type": str(block.get("type", "unknown"))})
    return parts


def _input_messages(body: Mapping[str, Any]) -> list[dict[str, Any]] | None:
    """The request's messages as OpenTelemetry GenAI input messages (roles and text)."""
    messages = body.get("messages")
    if not isinstance(messages, list):
        prompt = body.get("prompt", body.get("input"))
        if isinstance(prompt, str):
            return [{"role": "user", "parts": [{"type": "text", "content": prompt}]}]
        return None
    out: list[dict[str, Any]] = []
    system = body.get("system")
    if system is not None:
        out.append({"role": "system", "parts": _parts(system)})
    for message in messages:
        if isinstance(message, dict):
            role = message.get("role")
            out.append(
                {
                    "role": role if isinstance(role, str) else "user",
                    "parts": _parts(message.get("content")),
                }
            )
    return out
