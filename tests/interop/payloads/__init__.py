"""The recorded provider answers every interop upstream serves, and what is in them.

The files next to this module are the providers' documented examples (OpenAI's chat
completion object and chunk stream, Anthropic's message and its streaming events; ids,
field order and shapes as the API references show them), with one assistant text and one
set of token counts throughout, so a test can assert exact text and usage whichever
upstream, framing or delivery served it (README.md here says where each came from):

- ``openai_chat.json``: a ``chat.completion``, pretty-printed as OpenAI sends it.
- ``openai_chat_stream.sse``: ``chat.completion.chunk`` events, then ``data: [DONE]``.
- ``openai_chat_stream_usage.sse``: the same with ``"usage":null`` on every chunk and a last
  ``"choices":[]`` chunk carrying the usage (``stream_options.include_usage``).
- ``anthropic_messages.json``: a ``message``.
- ``anthropic_messages_stream.sse``: ``message_start``, ``content_block_start``, ``ping``,
  ``content_block_delta`` x `len(DELTAS)`, ``content_block_stop``, ``message_delta``,
  ``message_stop``.
- ``errors.json``: error bodies by API (``openai``/``anthropic``) and status (400, 404,
  409, 429, 501).

The servers replace the recorded model (`OPENAI_MODEL`, `ANTHROPIC_MODEL`, a JSON string
token, quotes included) with the request's ``model``, JSON-encoded with every non-ASCII
character escaped, so every body they send is ASCII. All files use LF line ends.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Final

__all__ = [
    "ANTHROPIC_MODEL",
    "COMPLETION_TOKENS",
    "DELTAS",
    "DIRECTORY",
    "OPENAI_MODEL",
    "PROMPT_TOKENS",
    "STREAM_EVENT_COUNTS",
    "TEXT",
    "TOTAL_TOKENS",
    "error_body",
    "read_payload",
]

DIRECTORY: Final = Path(__file__).resolve().parent

#: The assistant's answer, and the pieces every stream delivers it in (one delta each).
DELTAS: Final = ("Hello", "!", " How", " can", " I", " help", " you", " today", "?")
TEXT: Final = "".join(DELTAS)

#: Token counts, the same in all four answers: OpenAI's prompt_tokens / completion_tokens /
#: total_tokens, Anthropic's input_tokens / output_tokens (the stream's message_start says
#: output_tokens 1, its message_delta the final 9, as Anthropic's own example does).
PROMPT_TOKENS: Final = 12
COMPLETION_TOKENS: Final = 9
TOTAL_TOKENS: Final = PROMPT_TOKENS + COMPLETION_TOKENS

#: The model names as recorded; the servers echo the request's model in their place.
OPENAI_MODEL: Final = "gpt-4o-mini"
ANTHROPIC_MODEL: Final = "claude-3-5-sonnet-20241022"

#: How many SSE events each stream file holds ([DONE] counts as one).
STREAM_EVENT_COUNTS: Final = {
    "openai_chat_stream.sse": len(DELTAS) + 3,
    "openai_chat_stream_usage.sse": len(DELTAS) + 4,
    "anthropic_messages_stream.sse": len(DELTAS) + 6,
}


def read_payload(name: str) -> bytes:
    """The bytes of one payload file, as the servers read them."""
    return (DIRECTORY / name).read_bytes()


def error_body(api: str, status: int) -> dict[str, Any]:
    """The error JSON the servers answer ``status`` with (``api``: openai/anthropic)."""
    errors: dict[str, dict[str, dict[str, Any]]] = json.loads(read_payload("errors.json"))
    return errors[api][str(status)]
