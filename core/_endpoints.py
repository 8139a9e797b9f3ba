"""The endpoints the proxy knows, spelled once.

A request's (method, path) names an :data:`Endpoint`: which API the client
speaks and what it asks. The exchange looks it up once (``exchange.endpoint``,
``exchange.client_api``); the gateway routes the :data:`ROUTED` ones by their
``model``; hooks switch on the endpoint, never on a path.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

__all__ = [
    "CHAT_PATH",
    "ENDPOINTS",
    "HEALTH_PATH",
    "MESSAGES_PATH",
    "MODELS_PATH",
    "ROUTED",
    "TRANSLATABLE",
    "ApiName",
    "Endpoint",
]

#: The API a client (or an upstream) speaks.
ApiName = Literal["openai", "anthropic"]
#: What a request asks for.
Endpoint = Literal[
    "chat", "completions", "embeddings", "responses", "messages", "count_tokens", "models"
]

HEALTH_PATH = b"/health"
MODELS_PATH = b"/v1/models"
CHAT_PATH = b"/v1/chat/completions"
MESSAGES_PATH = b"/v1/messages"

#: (method, path) -> (the client's API, the endpoint).
ENDPOINTS: Mapping[tuple[bytes, bytes], tuple[ApiName, Endpoint]] = {
    (b"POST", CHAT_PATH): ("openai", "chat"),
    (b"POST", b"/v1/completions"): ("openai", "completions"),
    (b"POST", b"/v1/embeddings"): ("openai", "embeddings"),
    (b"POST", b"/v1/responses"): ("openai", "responses"),
    (b"POST", MESSAGES_PATH): ("anthropic", "messages"),
    (b"POST", b"/v1/messages/count_tokens"): ("anthropic", "count_tokens"),
    (b"GET", MODELS_PATH): ("openai", "models"),
}

#: The endpoints the gateway routes by the request's ``model``.
ROUTED: frozenset[Endpoint] = frozenset(
    {"chat", "completions", "embeddings", "responses", "messages"}
)
#: The endpoints translated between the two APIs: any provider can serve them.
TRANSLATABLE: frozenset[Endpoint] = frozenset({"chat", "messages"})
