"""Planning a routed request: which provider, what to send, how to read the answer.

``plan()`` turns a client request into a ``Plan``: the upstream request
(target, headers, body) and how its response must be treated -- passed
through with usage read on the way, or translated between the OpenAI and
Anthropic APIs. Pure: the exchange carries the plan out.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from .._endpoints import CHAT_PATH, MESSAGES_PATH, ApiName
from .._errors import ModelNotFoundError, RemoteProtocolError, ValidationError
from .._headers import Headers
from .._http import over_json_limits, parse_json_object
from .._json import MAX_JSON_ITEMS, dumps, redump
from ._routing import Deployment, Provider, Router

__all__ = ["Plan", "StreamTranslator", "plan", "plan_passthrough"]


class StreamTranslator(Protocol):
    """Turns one upstream SSE block into the client's blocks, incrementally."""

    def feed(self, block: bytes) -> list[bytes]:
        """One whole upstream block in; zero or more client blocks out."""

    def close(self) -> list[bytes]:
        """The upstream stream ended: what the client must still receive."""


@dataclass(slots=True, kw_only=True)
class Plan:
    """An upstream request and how to read its answer."""

    provider: Provider
    target: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes
    #: The upstream's API, when its usage can be read from the answer.
    usage_api: ApiName | None = None
    #: Remove the usage-only chunk the client did not ask for (we asked for it).
    strip_usage: bool = False
    #: Translation of the answer, when the upstream speaks the other API.
    stream_translator: Callable[[], StreamTranslator] | None = None
    body_translator: Callable[[Mapping[str, Any]], Mapping[str, Any]] | None = None
    error_translator: Callable[[int, bytes], bytes] | None = None


def _bad(message: str, param: str | None = None, *, code: str | None = None) -> RemoteProtocolError:
    return ValidationError(message, code=code, param=param)


def plan_passthrough(
    provider: Provider, path: bytes, query: bytes, headers: Headers, body: bytes
) -> Plan:
    """Forward as it is (the transparent proxy of the one-provider shorthand)."""
    return Plan(
        provider=provider,
        target=provider.target(path) + query,
        headers=provider.request_headers(headers),
        body=body,
    )


def plan(
    router: Router,
    *,
    api: ApiName,
    kind: str,
    path: bytes,
    query: bytes,
    headers: Headers,
    raw: bytes,
    rand: float,
    exchange_id: str,
    created: int,
    default_max_tokens: int,
    deployment: Deployment | None = None,
    public_model: str | None = None,
    parsed: dict[str, Any] | RemoteProtocolError | None = None,
    max_json_items: int = MAX_JSON_ITEMS,
) -> tuple[str | None, Deployment | None, Plan]:
    """Route a request for a model; returns the model asked for, the deployment, the plan.

    In the one-provider shorthand, a same-API request the proxy cannot read
    (not JSON, no model) is forwarded untouched: the upstream judges it; one
    over the JSON limits is refused all the same (``max_json_items`` values,
    which bounds every JSON document the plan reads, answers and events too).
    A retry names its ``deployment`` (and the ``public_model`` it serves, for
    a fallback) instead of resolving the body's model. ``parsed`` is ``raw``
    already parsed, or the error parsing it gave (the exchange parses it once):
    it is never changed.
    """
    shorthand = router.shorthand
    lenient = shorthand is not None and shorthand.type == api
    try:
        if parsed is None:
            parsed = parse_json_object(raw, max_items=max_json_items)
        elif isinstance(parsed, RemoteProtocolError):
            raise parsed
        body = parsed
    except RemoteProtocolError as exc:
        if lenient and not over_json_limits(exc):
            assert shorthand is not None
            return None, None, plan_passthrough(shorthand, path, query, headers, raw)
        raise
    model = body.get("model")
    if not isinstance(model, str) or not model:
        if lenient:
            assert shorthand is not None
            return None, None, plan_passthrough(shorthand, path, query, headers, raw)
        raise _bad("'model' is required and must be a string", "model", code="invalid_value")
    if deployment is None:
        deployment = router.resolve(model, rand)
    elif public_model is not None:
        model = public_model
    if deployment is None:
        known = ", ".join(sorted(router.models)) or "none configured"
        raise ModelNotFoundError(
            f"the model '{model}' does not exist (models: {known}; or use provider/model)",
            param="model",
        )
    provider = deployment.provider
    stream = body.get("stream") is True
    if provider.type == api:
        return model, deployment, _native(deployment, api, kind, path + query, headers, raw, body)
    if api == "openai" and kind == "chat":
        # The translations are loaded by the first request that needs one: a
        # configuration that never translates never imports them.
        from ._chat_request_to_messages import chat_request_to_messages  # noqa: PLC0415
        from ._messages_response_to_chat import (  # noqa: PLC0415
            MessagesStreamToChat,
            anthropic_error_to_openai,
            messages_response_to_chat,
        )

        translated = chat_request_to_messages(
            body,
            model=deployment.model,
            default_max_tokens=default_max_tokens,
            max_json_items=max_json_items,
        )
        options = body.get("stream_options")
        include_usage = isinstance(options, dict) and options.get("include_usage") is True
        completion_id = f"chatcmpl-{exchange_id}"
        return (
            model,
            deployment,
            Plan(
                provider=provider,
                target=provider.target(MESSAGES_PATH),
                headers=provider.translated_headers(headers, stream=stream),
                body=dumps(translated),
                usage_api="anthropic",
                stream_translator=lambda: MessagesStreamToChat(
                    model=model,
                    created=created,
                    completion_id=completion_id,
                    include_usage=include_usage,
                    max_json_items=max_json_items,
                ),
                body_translator=lambda answer: messages_response_to_chat(
                    answer, model=model, created=created, completion_id=completion_id
                ),
                error_translator=lambda status, data: anthropic_error_to_openai(
                    status, data, max_json_items=max_json_items
                ),
            ),
        )
    if api == "anthropic":
        from ._chat_response_to_messages import (  # noqa: PLC0415
            ChatStreamToMessages,
            chat_response_to_messages,
            openai_error_to_anthropic,
        )
        from ._messages_request_to_chat import messages_request_to_chat  # noqa: PLC0415

        translated = messages_request_to_chat(
            body, model=deployment.model, max_tokens_param=provider.max_tokens_param
        )
        message_id = f"msg_{exchange_id}"
        return (
            model,
            deployment,
            Plan(
                provider=provider,
                target=provider.target(CHAT_PATH),
                headers=provider.translated_headers(headers, stream=stream),
                body=dumps(translated),
                usage_api="openai",
                stream_translator=lambda: ChatStreamToMessages(
                    model=model, message_id=message_id, max_json_items=max_json_items
                ),
                body_translator=lambda answer: chat_response_to_messages(
                    answer, model=model, message_id=message_id, max_json_items=max_json_items
                ),
                error_translator=lambda status, data: openai_error_to_anthropic(
                    status, data, max_json_items=max_json_items
                ),
            ),
        )
    raise _bad(
        f"'{model}' is served by an Anthropic provider, which has no {path.decode()} "
        "(only chat completions are translated)",
        "model",
        code="unsupported_endpoint",
    )


def _native(  # noqa: PLR0917 -- private, called once
    deployment: Deployment,
    api: ApiName,
    kind: str,
    target: bytes,
    headers: Headers,
    raw: bytes,
    body: dict[str, Any],
) -> Plan:
    """Same API on both sides: forward, renaming the model and asking for usage."""
    provider = deployment.provider
    changes: dict[str, Any] = {}  # the caller's dict is never changed
    if deployment.model != body["model"]:
        changes["model"] = deployment.model
    strip_usage = False
    if api == "openai" and kind in ("chat", "completions") and body.get("stream") is True:
        options = body.get("stream_options")
        if not (isinstance(options, dict) and options.get("include_usage") is True):
            changes["stream_options"] = {
                **(options if isinstance(options, dict) else {}),
                "include_usage": True,
            }
            strip_usage = True
    return Plan(
        provider=provider,
        target=provider.target(target),
        headers=provider.request_headers(headers),
        body=redump({**body, **changes}, raw) if changes else raw,
        usage_api=api,
        strip_usage=strip_usage,
    )
