"""The built-in mock provider: deterministic OpenAI-style answers, no network.

Served when no upstream is configured, so a fresh install answers something
useful. The same request always gets the same answer (ids derive from the
exchange id, timestamps from the exchange's start).
"""

from __future__ import annotations

import hashlib
import math
import struct
from dataclasses import dataclass
from typing import Any

from .._endpoints import ENDPOINTS
from .._errors import ModelNotFoundError, ValidationError
from .._http import parse_json_object
from .._json import MAX_JSON_ITEMS, dumps

__all__ = ["MOCK_MODELS", "MockAnswer", "mock_answer"]

MOCK_MODELS = ("mock-gpt", "mock-embedding")
_EMBEDDING_DIMS = 16
_JSON = (b"content-type", b"application/json")
_SSE = (b"content-type", b"text/event-stream")


@dataclass(frozen=True, slots=True, kw_only=True)
class MockAnswer:
    """The mock's answer: a status, headers, and either a body or SSE blocks."""

    status: int
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes = b""
    blocks: tuple[bytes, ...] = ()
    stream: bool = False


def _json_answer(value: Any) -> MockAnswer:
    body = dumps(value)
    return MockAnswer(
        status=200, headers=(_JSON, (b"content-length", str(len(body)).encode())), body=body
    )


def _bad(message: str, param: str | None = None) -> ValidationError:
    return ValidationError(message, code="invalid_value" if param else None, param=param)


def _tokens(text: str) -> int:
    """A deterministic stand-in for a tokenizer: about four characters a token."""
    return max(1, math.ceil(len(text) / 4)) if text else 0


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return ""


def _chat(request: dict[str, Any], exchange_id: str, created: int) -> MockAnswer:
    messages = request.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _bad("'messages' must be a non-empty array", "messages")
    model = request.get("model")
    if not isinstance(model, str) or not model:
        raise _bad("'model' is required", "model")
    prompt = ""
    last_user = ""
    for message in messages:
        if not isinstance(message, dict):
            raise _bad("each message must be an object", "messages")
        text = _text_of(message.get("content"))
        prompt += text
        if message.get("role") == "user":
            last_user = text
    words = f"This is the sansproxy mock. You said: {last_user[:500]}".split()
    limit = request.get("max_completion_tokens", request.get("max_tokens"))
    finish = "stop"
    if isinstance(limit, int) and not isinstance(limit, bool) and 0 < limit < len(words):
        words, finish = words[:limit], "length"
    content = " ".join(words)
    usage = {
        "prompt_tokens": _tokens(prompt) + 3 * len(messages),
        "completion_tokens": len(words),
        "total_tokens": _tokens(prompt) + 3 * len(messages) + len(words),
    }
    ident = f"chatcmpl-mock-{exchange_id}"
    if not request.get("stream"):
        return _json_answer(
            {
                "id": ident,
                "object": "chat.completion",
                "created": created,
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": content, "refusal": None},
                        "logprobs": None,
                        "finish_reason": finish,
                    }
                ],
                "usage": usage,
                "system_fingerprint": "sansproxy-mock",
            }
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

    blocks = [delta({"role": "assistant", "content": ""})]
    blocks.extend(delta({"content": w if i == 0 else " " + w}) for i, w in enumerate(words))
    blocks.append(delta({}, finish))
    options = request.get("stream_options")
    if isinstance(options, dict) and options.get("include_usage"):
        blocks.append(chunk([], usage=usage))
    blocks.append(b"data: [DONE]\n\n")
    return MockAnswer(
        status=200,
        headers=(_SSE, (b"cache-control", b"no-cache")),
        blocks=tuple(blocks),
        stream=True,
    )


def _embedding(text: str) -> list[float]:
    digest = hashlib.sha256(text.encode()).digest()
    raw = struct.unpack(f"<{_EMBEDDING_DIMS}H", digest[: 2 * _EMBEDDING_DIMS])
    return [round(v / 32767.5 - 1.0, 6) for v in raw]


def _embeddings(request: dict[str, Any]) -> MockAnswer:
    model = request.get("model")
    if not isinstance(model, str) or not model:
        raise _bad("'model' is required", "model")
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
        }
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
    if endpoint == "chat":
        return _chat(parse_json_object(body, max_items=max_json_items), exchange_id, created)
    if endpoint == "embeddings":
        return _embeddings(parse_json_object(body, max_items=max_json_items))
    raise ModelNotFoundError(
        f"the mock provider does not serve {method.decode('latin-1')} "
        f"{path.decode('latin-1')}; it serves GET /v1/models, POST /v1/chat/completions "
        "and POST /v1/embeddings",
        code="unknown_url",
    )
