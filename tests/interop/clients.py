"""Real clients the project did not write, as uniform drivers for the interop suite.

`run_client(name, base_url=..., model=..., stream=...)` sends one single-turn chat to
the proxy at `base_url` (its root, ``http://HOST:PORT``) with the named client and
returns a `ClientResult`: what that client assembled, as its users would see it.

The clients (`CLIENTS`):

- ``openai-python``: the `openai` SDK, ``client.chat.completions.create(...)``
  (non-stream via ``with_raw_response``, or ``stream=True`` chunks).
- ``openai-python-helper``: ``client.chat.completions.stream(...)``, its events and its
  accumulator ``get_final_completion()``. Streams only.
- ``openai-node`` / ``openai-node-helper``: the `openai` npm package run by
  tests/interop/node/chat.mjs (``create()`` with ``for await``; the helper is
  ``client.chat.completions.stream(...)`` and ``finalChatCompletion()``). Need Node
  and ``npm ci --prefix tests/interop/node`` (`node_available` does it).
- ``curl`` / ``curl-compressed``: ``curl -sS -N -D -`` POSTing to /v1/chat/completions
  (the second adds ``--compressed``, as users do); SSE parsed here from its stdout.
- ``anthropic-python``: the `anthropic` SDK, ``client.messages.create(...)``
  (non-stream via ``with_raw_response``, or ``stream=True`` raw events).
- ``anthropic-python-helper``: ``client.messages.stream(...)``, its events and its
  accumulator ``get_final_message()``. Streams only.
- ``curl-anthropic``: curl POSTing to /v1/messages with ``x-api-key`` and
  ``anthropic-version: 2023-06-01``, as in Anthropic's own curl examples.

Every client is built with no retries and the given timeout; subprocesses run
without a shell and under a deadline. A failure the API reports (an error status, an
error event in the stream) or a failed connection is a result with `error` set, never
an exception; what was assembled before a mid-stream failure is kept. A bug in a
driver, or a client crashing in a way no user would see as an API error, raises.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

import anthropic
import httpx2
import openai
import pytest
from anthropic.types import MessageParam
from openai.types.chat import ChatCompletionUserMessageParam

__all__ = [
    "ANTHROPIC_VERSION",
    "CLIENTS",
    "NODE_DIR",
    "NPM_CI",
    "STREAM_ONLY",
    "Api",
    "ClientResult",
    "api_of",
    "clients_for",
    "node_available",
    "parse_sse",
    "run_client",
]

Api = Literal["openai", "anthropic"]

CLIENTS: Final[tuple[str, ...]] = (
    "openai-python",
    "openai-python-helper",
    "openai-node",
    "openai-node-helper",
    "curl",
    "curl-compressed",
    "anthropic-python",
    "anthropic-python-helper",
    "curl-anthropic",
)
_APIS: Final[Mapping[str, Api]] = {
    name: "anthropic" if "anthropic" in name else "openai" for name in CLIENTS
}
# The streaming helpers have no non-streaming form.
STREAM_ONLY: Final = frozenset(
    {"openai-python-helper", "openai-node-helper", "anthropic-python-helper"}
)
# What curl-anthropic sends (the SDK sends its own, newer, version).
ANTHROPIC_VERSION: Final = "2023-06-01"

NODE_DIR: Final = Path(__file__).resolve().parent / "node"
NPM_CI: Final = ("npm", "ci", "--prefix", str(NODE_DIR), "--no-audit", "--no-fund")
_NODE_SCRIPT: Final = NODE_DIR / "chat.mjs"
_NODE_MIN_MAJOR: Final = 20
_NPM_TIMEOUT: Final = 300.0
# Head room over the request timeout for a subprocess's start-up and exit.
_SUBPROCESS_GRACE: Final = 15.0
# Raw Anthropic stream events; the helpers also yield events they derive ("text", ...).
_ANTHROPIC_RAW: Final = frozenset(
    {
        "message_start",
        "message_delta",
        "message_stop",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
    }
)


@dataclass(frozen=True)
class ClientResult:
    """What one client got from one chat request, in the same terms for every client."""

    text: str
    """The assistant text the client assembled (its accumulator's, for the helpers)."""
    finish_reason: str | None
    """OpenAI's finish_reason or Anthropic's stop_reason."""
    usage: dict[str, int] | None
    """As the client saw it: ``{"input_tokens", "output_tokens"}`` (from OpenAI's
    prompt/completion tokens), or None when the answer carried none."""
    model: str | None
    events: int
    """Chunks or events the client iterated (0 for non-stream): OpenAI chunks before
    ``[DONE]``; Anthropic events that are not ``ping`` (which the SDK hides)."""
    status: int
    """The HTTP status: 200 on success (also when a stream fails after its head), the
    error's status otherwise; 0 when no response head arrived."""
    error: dict[str, Any] | None
    """The error as the client parsed it: ``{"type", "code", "message"}``. Failures
    without an API error body have a type ``client.connection``, ``client.timeout`` or
    ``client.decode`` and the client's own exception name or exit code as code."""
    headers: dict[str, str]
    """The response headers (lower-cased names; repeats joined with ", ")."""
    id: str | None = None
    """The completion's or message's id."""
    pieces: tuple[str, ...] = ()
    """The non-empty text deltas in arrival order (streams only)."""


@dataclass
class _Acc:
    """What a driver has assembled so far; a failure keeps it."""

    pieces: list[str] = field(default_factory=list)
    text: str | None = None
    finish_reason: str | None = None
    usage: dict[str, int] | None = None
    model: str | None = None
    id: str | None = None
    events: int = 0
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    error: dict[str, Any] | None = None

    def result(self) -> ClientResult:
        return ClientResult(
            text="".join(self.pieces) if self.text is None else self.text,
            finish_reason=self.finish_reason,
            usage=self.usage,
            model=self.model,
            events=self.events,
            status=self.status,
            error=self.error,
            headers=self.headers,
            id=self.id,
            pieces=tuple(self.pieces),
        )

    def take_headers(self, response: httpx2.Response) -> None:
        self.status = response.status_code
        self.headers = {name.lower(): value for name, value in response.headers.items()}

    def fail(self, kind: str, code: str | None, message: str) -> None:
        self.error = {"type": kind, "code": code, "message": message}


def api_of(client: str) -> Api:
    """The API a client speaks: "openai" (chat completions) or "anthropic" (messages)."""
    try:
        return _APIS[client]
    except KeyError:
        raise ValueError(f"unknown client {client!r}; one of {CLIENTS}") from None


def clients_for(api: Api | None = None, *, stream: bool | None = None) -> tuple[str, ...]:
    """The clients of one API (or all), optionally only those that can (not) stream."""
    return tuple(
        name
        for name in CLIENTS
        if (api is None or _APIS[name] == api) and (stream is not False or name not in STREAM_ONLY)
    )


def run_client(
    client: str,
    *,
    base_url: str,
    model: str,
    stream: bool,
    include_usage: bool = False,
    api_key: str = "sk-test",
    prompt: str = "Hello",
    max_tokens: int = 64,
    timeout: float = 20.0,
) -> ClientResult:
    """Send one user message `prompt` with `client` to the proxy at `base_url` (its root).

    `include_usage` asks OpenAI streams for ``stream_options.include_usage`` (ignored
    when not streaming and by Anthropic clients, whose streams always carry usage).
    """
    api_of(client)
    if client in STREAM_ONLY and not stream:
        raise ValueError(f"{client} streams only; pass stream=True")
    root = base_url.rstrip("/")
    acc = _Acc()
    if client in ("openai-node", "openai-node-helper"):
        node_available()
        spec = {
            "base_url": f"{root}/v1",
            "api_key": api_key,
            "model": model,
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": max_tokens,
            "stream": stream,
            "include_usage": include_usage and stream,
            "helper": client == "openai-node-helper",
            "timeout": timeout,
        }
        return _run_node(spec, timeout=timeout)
    if client.startswith("curl"):
        _run_curl(
            acc,
            api=api_of(client),
            compressed=client == "curl-compressed",
            root=root,
            model=model,
            stream=stream,
            include_usage=include_usage,
            api_key=api_key,
            prompt=prompt,
            max_tokens=max_tokens,
            timeout=timeout,
        )
        return acc.result()
    if client.startswith("openai-python"):
        with contextlib.suppress(_Failed):
            _run_openai_python(
                acc,
                helper=client == "openai-python-helper",
                root=root,
                model=model,
                stream=stream,
                include_usage=include_usage,
                api_key=api_key,
                prompt=prompt,
                max_tokens=max_tokens,
                timeout=timeout,
            )
        return acc.result()
    with contextlib.suppress(_Failed):
        _run_anthropic_python(
            acc,
            helper=client == "anthropic-python-helper",
            root=root,
            model=model,
            stream=stream,
            api_key=api_key,
            prompt=prompt,
            max_tokens=max_tokens,
            timeout=timeout,
        )
    return acc.result()


class _Failed(Exception):
    """The client failed; the accumulator holds the error."""


# -- helpers --------------------------------------------------------------------------


def _openai_usage(usage: Any) -> dict[str, int] | None:
    """{"input_tokens", "output_tokens"} from an OpenAI usage object or dict."""
    if usage is None:
        return None
    if not isinstance(usage, Mapping):
        usage = usage.model_dump()
    return {
        "input_tokens": int(usage["prompt_tokens"]),
        "output_tokens": int(usage["completion_tokens"]),
    }


def _error_fields(body: object) -> dict[str, Any]:
    """type/code/message from an error body: OpenAI's {"error": {...}}, Anthropic's
    {"type": "error", "error": {...}}, or the bare inner object."""
    inner: object = body.get("error", body) if isinstance(body, Mapping) else body
    if not isinstance(inner, Mapping):
        return {"type": None, "code": None, "message": str(body)}
    code = inner.get("code")
    return {
        "type": inner.get("type"),
        "code": None if code is None else str(code),
        "message": inner.get("message"),
    }


@contextlib.contextmanager
def _python_failures(acc: _Acc, sdk: Any) -> Iterator[None]:
    """Turn an SDK's exceptions (and raw httpx2 transport errors) into `acc.error`."""
    try:
        yield
    except sdk.APIStatusError as exc:
        acc.take_headers(exc.response)
        acc.error = _error_fields(exc.body)
        raise _Failed from exc
    except sdk.APITimeoutError as exc:
        acc.fail("client.timeout", type(exc).__name__, str(exc))
        raise _Failed from exc
    except sdk.APIConnectionError as exc:
        cause = exc.__cause__
        acc.fail(
            "client.connection",
            type(exc).__name__,
            f"{exc}: {type(cause).__name__}: {cause}" if cause else str(exc),
        )
        raise _Failed from exc
    except sdk.APIError as exc:  # an error event in a stream (no status of its own)
        acc.error = _error_fields(exc.body)
        raise _Failed from exc
    except httpx2.TimeoutException as exc:  # the anthropic SDK lets these through mid-stream
        acc.fail("client.timeout", type(exc).__name__, str(exc))
        raise _Failed from exc
    except httpx2.TransportError as exc:
        acc.fail("client.connection", type(exc).__name__, str(exc))
        raise _Failed from exc
    except json.JSONDecodeError as exc:  # an SSE data line that is not JSON
        acc.fail("client.decode", type(exc).__name__, str(exc))
        raise _Failed from exc


# -- the openai Python SDK ------------------------------------------------------------


def _run_openai_python(
    acc: _Acc,
    *,
    helper: bool,
    root: str,
    model: str,
    stream: bool,
    include_usage: bool,
    api_key: str,
    prompt: str,
    max_tokens: int,
    timeout: float,
) -> None:
    messages: list[ChatCompletionUserMessageParam] = [{"role": "user", "content": prompt}]
    stream_options: Any = {"include_usage": True} if include_usage else openai.omit
    with (
        openai.OpenAI(
            base_url=f"{root}/v1", api_key=api_key, max_retries=0, timeout=timeout
        ) as client,
        _python_failures(acc, openai),
    ):
        if helper:
            _openai_python_helper(
                acc,
                client,
                model=model,
                messages=messages,
                max_tokens=max_tokens,
                stream_options=stream_options,
            )
        elif stream:
            chunks = client.chat.completions.create(
                model=model,
                messages=messages,
                max_tokens=max_tokens,
                stream=True,
                stream_options=stream_options,
            )
            acc.take_headers(chunks.response)
            with chunks:
                for chunk in chunks:
                    acc.events += 1
                    acc.id = acc.id or chunk.id
                    acc.model = acc.model or chunk.model
                    if chunk.usage is not None:
                        acc.usage = _openai_usage(chunk.usage)
                    for choice in chunk.choices[:1]:
                        if choice.delta.content:
                            acc.pieces.append(choice.delta.content)
                        if choice.finish_reason is not None:
                            acc.finish_reason = choice.finish_reason
        else:
            raw = client.chat.completions.with_raw_response.create(
                model=model, messages=messages, max_tokens=max_tokens
            )
            acc.take_headers(raw.http_response)
            completion = raw.parse()
            _take_completion(acc, completion)


def _take_completion(acc: _Acc, completion: Any) -> None:
    """Fill `acc` from a ChatCompletion (or the helper's ParsedChatCompletion)."""
    choice = completion.choices[0] if completion.choices else None
    acc.text = (choice.message.content if choice else None) or ""
    acc.finish_reason = choice.finish_reason if choice else None
    acc.usage = _openai_usage(completion.usage)
    acc.model = completion.model
    acc.id = completion.id


def _openai_python_helper(
    acc: _Acc,
    client: openai.OpenAI,
    *,
    model: str,
    messages: list[ChatCompletionUserMessageParam],
    max_tokens: int,
    stream_options: Any,
) -> None:
    with client.chat.completions.stream(
        model=model, messages=messages, max_tokens=max_tokens, stream_options=stream_options
    ) as events:
        # The helper keeps its response private; it is the raw Stream's response.
        acc.take_headers(events._response)
        for event in events:
            if event.type == "chunk":
                acc.events += 1
            elif event.type == "content.delta" and event.delta:
                acc.pieces.append(event.delta)
        try:
            completion: Any = events.get_final_completion()
        except (openai.LengthFinishReasonError, openai.ContentFilterFinishReasonError) as exc:
            # The helper raises on these finish reasons even with no response_format;
            # the accumulated completion is still there, and a user would read it.
            completion = exc.completion
        _take_completion(acc, completion)


# -- the anthropic Python SDK ---------------------------------------------------------


def _run_anthropic_python(
    acc: _Acc,
    *,
    helper: bool,
    root: str,
    model: str,
    stream: bool,
    api_key: str,
    prompt: str,
    max_tokens: int,
    timeout: float,
) -> None:
    messages: list[MessageParam] = [{"role": "user", "content": prompt}]
    with (
        anthropic.Anthropic(
            base_url=root, api_key=api_key, max_retries=0, timeout=timeout
        ) as client,
        _python_failures(acc, anthropic),
    ):
        if helper:
            with client.messages.stream(
                model=model, max_tokens=max_tokens, messages=messages
            ) as events:
                acc.take_headers(events.response)
                for helper_event in events:
                    if helper_event.type not in _ANTHROPIC_RAW:
                        continue  # the helper's own derived events ("text", ...)
                    acc.events += 1
                    # The very rule of the helper's `text_stream`.
                    if (
                        helper_event.type == "content_block_delta"
                        and helper_event.delta.type == "text_delta"
                        and helper_event.delta.text
                    ):
                        acc.pieces.append(helper_event.delta.text)
                _take_message(acc, events.get_final_message())
        elif stream:
            raw_events = client.messages.create(
                model=model, max_tokens=max_tokens, messages=messages, stream=True
            )
            acc.take_headers(raw_events.response)
            with raw_events:
                input_tokens: int | None = None
                for event in raw_events:
                    acc.events += 1
                    if event.type == "message_start":
                        acc.id = event.message.id
                        acc.model = event.message.model
                        input_tokens = event.message.usage.input_tokens
                    elif event.type == "content_block_delta":
                        if event.delta.type == "text_delta" and event.delta.text:
                            acc.pieces.append(event.delta.text)
                    elif event.type == "message_delta":
                        acc.finish_reason = event.delta.stop_reason
                        if event.usage.input_tokens is not None:
                            input_tokens = event.usage.input_tokens
                        acc.usage = {
                            "input_tokens": input_tokens or 0,
                            "output_tokens": event.usage.output_tokens,
                        }
        else:
            raw = client.messages.with_raw_response.create(
                model=model, max_tokens=max_tokens, messages=messages
            )
            acc.take_headers(raw.http_response)
            _take_message(acc, raw.parse())


def _take_message(acc: _Acc, message: Any) -> None:
    """Fill `acc` from an Anthropic Message."""
    acc.text = "".join(block.text for block in message.content if block.type == "text")
    acc.finish_reason = message.stop_reason
    acc.usage = {
        "input_tokens": message.usage.input_tokens,
        "output_tokens": message.usage.output_tokens,
    }
    acc.model = message.model
    acc.id = message.id


# -- the openai Node SDK --------------------------------------------------------------

_node_lock = threading.Lock()
_node_problem: list[str | None] = []  # [] unchecked; [None] ready; [why] unusable


def node_available() -> None:
    """Make sure Node and tests/interop/node/node_modules are there (`npm ci` once).

    Skips the calling test when Node, npm or the install is missing, or fails it when
    the environment variable CI is set (a CI run must not skip the Node client).
    """
    with _node_lock:
        if not _node_problem:
            _node_problem.append(_prepare_node())
        problem = _node_problem[0]
    if problem is None:
        return
    if os.environ.get("CI", "").lower() not in ("", "0", "false", "no"):
        pytest.fail(problem, pytrace=False)
    pytest.skip(problem)


def _pinned_version() -> str | None:
    manifest = json.loads((NODE_DIR / "package.json").read_text(encoding="utf-8"))
    version = manifest.get("dependencies", {}).get("openai")
    return version if isinstance(version, str) else None


def _installed_version() -> str | None:
    path = NODE_DIR / "node_modules" / "openai" / "package.json"
    try:
        version = json.loads(path.read_text(encoding="utf-8")).get("version")
    except (OSError, ValueError):
        return None
    return version if isinstance(version, str) else None


def _prepare_node() -> str | None:
    """None when the Node client can run, else why not."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        return "the Node client needs `node` and `npm` on PATH"
    try:
        out = subprocess.run(
            [node, "--version"], capture_output=True, text=True, timeout=30, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        return f"`node --version` failed: {exc}"
    match = re.match(r"v(\d+)\.", out.strip())
    if match is None or int(match[1]) < _NODE_MIN_MAJOR:
        return f"the Node client needs Node >= {_NODE_MIN_MAJOR}; found {out.strip()!r}"
    pinned = _pinned_version()
    if _installed_version() == pinned:
        return None
    # One `npm ci` at a time, across processes too (pytest-xdist workers).
    key = hashlib.sha256(str(NODE_DIR).encode()).hexdigest()[:16]
    lock_path = Path(tempfile.gettempdir()) / f"sansproxy-npm-ci-{key}.lock"
    with lock_path.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _installed_version() == pinned:
            return None
        try:
            done = subprocess.run(
                [npm, *NPM_CI[1:]],
                capture_output=True,
                text=True,
                timeout=_NPM_TIMEOUT,
                check=False,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            return f"`{' '.join(NPM_CI)}` failed: {exc}"
    if done.returncode != 0:
        return (
            f"`{' '.join(NPM_CI)}` exited with status {done.returncode}:\n"
            f"{done.stdout}{done.stderr}"
        )
    if _installed_version() != pinned:
        return f"`{' '.join(NPM_CI)}` did not install openai {pinned}"
    return None


def _run_node(spec: Mapping[str, Any], *, timeout: float) -> ClientResult:
    argv = [shutil.which("node") or "node", str(_NODE_SCRIPT)]
    done = subprocess.run(
        argv,
        input=json.dumps(spec),
        capture_output=True,
        text=True,
        cwd=NODE_DIR,
        timeout=timeout + _SUBPROCESS_GRACE,
        check=False,
    )
    lines = done.stdout.strip().splitlines()
    try:
        out = json.loads(lines[-1]) if done.returncode == 0 and lines else None
    except ValueError:
        out = None
    if not isinstance(out, dict):
        raise RuntimeError(
            f"the Node client failed (exit status {done.returncode}):\n"
            f"--- stdout ---\n{done.stdout}\n--- stderr ---\n{done.stderr}"
        )
    error = out.get("error")
    if isinstance(error, dict):
        error = {key: error.get(key) for key in ("type", "code", "message")}
    return ClientResult(
        text=out["text"] or "",
        finish_reason=out["finish_reason"],
        usage=_openai_usage(out["usage"]),
        model=out["model"],
        events=int(out["chunks"]),
        status=int(out["status"]),
        error=error,
        headers={str(k).lower(): str(v) for k, v in out["headers"].items()},
        id=out["id"],
        pieces=tuple(out["pieces"]),
    )


# -- curl -----------------------------------------------------------------------------

_CURL_TIMEOUT_EXIT: Final = 28
_HEAD_END: Final = re.compile(rb"\r?\n\r?\n")
_LINE_END: Final = re.compile(r"\r\n|\r|\n")


def _run_curl(
    acc: _Acc,
    *,
    api: Api,
    compressed: bool,
    root: str,
    model: str,
    stream: bool,
    include_usage: bool,
    api_key: str,
    prompt: str,
    max_tokens: int,
    timeout: float,
) -> None:
    body: dict[str, Any] = {
        "model": model,
        "max_tokens": max_tokens,
        "messages": [{"role": "user", "content": prompt}],
    }
    if stream:
        body["stream"] = True
    if api == "openai":
        url = f"{root}/v1/chat/completions"
        auth = ["-H", f"Authorization: Bearer {api_key}"]
        if stream and include_usage:
            body["stream_options"] = {"include_usage": True}
    else:
        url = f"{root}/v1/messages"
        auth = ["-H", f"x-api-key: {api_key}", "-H", f"anthropic-version: {ANTHROPIC_VERSION}"]
    argv = [
        shutil.which("curl") or "curl",
        "-sS",
        "--noproxy",
        "*",
        "--max-time",
        f"{timeout:g}",
        "-D",
        "-",
        *(["-N"] if stream else []),
        *(["--compressed"] if compressed else []),
        "-H",
        "Content-Type: application/json",
        *auth,
        "--data-binary",
        "@-",
        url,
    ]
    done = subprocess.run(
        argv,
        input=json.dumps(body).encode(),
        capture_output=True,
        timeout=timeout + _SUBPROCESS_GRACE,
        check=False,
    )
    payload = _take_curl_head(acc, done.stdout)
    if done.returncode != 0:
        kind = "client.timeout" if done.returncode == _CURL_TIMEOUT_EXIT else "client.connection"
        message = done.stderr.decode("utf-8", "replace").strip()
        acc.fail(kind, f"curl exit {done.returncode}", message)
        if acc.status == 0 or acc.status >= 400:
            return
    elif acc.status >= 400:
        try:
            acc.error = _error_fields(json.loads(payload))
        except ValueError:
            acc.fail("client.decode", "JSONDecodeError", payload.decode("utf-8", "replace"))
        return
    if acc.status == 0:
        acc.fail("client.decode", "no-head", f"curl printed no response head: {done.stdout!r}")
        return
    failed = acc.error is not None
    try:
        if stream:
            _take_sse(acc, api, parse_sse(payload.decode("utf-8", "replace")))
        elif not failed:
            _take_json(acc, api, json.loads(payload))
    except ValueError as exc:
        if not failed:
            acc.fail("client.decode", type(exc).__name__, str(exc))


def _take_curl_head(acc: _Acc, out: bytes) -> bytes:
    """Parse the head(s) `-D -` printed (skipping 1xx ones); return the body after it."""
    while out.startswith(b"HTTP/"):
        match = _HEAD_END.search(out)
        head, out = (out, b"") if match is None else (out[: match.start()], out[match.end() :])
        lines = head.decode("latin-1").splitlines()
        status = int(lines[0].split()[1])
        if 100 <= status < 200:
            continue
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            key = name.strip().lower()
            headers[key] = f"{headers[key]}, {value.strip()}" if key in headers else value.strip()
        acc.status, acc.headers = status, headers
        break
    return out


def _take_json(acc: _Acc, api: Api, body: Any) -> None:
    if api == "openai":
        choice = body["choices"][0] if body.get("choices") else None
        acc.text = (choice["message"].get("content") if choice else None) or ""
        acc.finish_reason = choice.get("finish_reason") if choice else None
        acc.usage = _openai_usage(body.get("usage"))
    else:
        acc.text = "".join(b["text"] for b in body["content"] if b.get("type") == "text")
        acc.finish_reason = body.get("stop_reason")
        usage = body.get("usage")
        acc.usage = (
            {"input_tokens": usage["input_tokens"], "output_tokens": usage["output_tokens"]}
            if usage
            else None
        )
    acc.model = body.get("model")
    acc.id = body.get("id")


def _take_sse(acc: _Acc, api: Api, events: list[tuple[str | None, str]]) -> None:
    """Assemble a stream as the SDKs do: OpenAI stops at [DONE]; pings are skipped."""
    input_tokens = 0
    for name, data in events:
        if api == "openai":
            if data.startswith("[DONE]"):
                return
            chunk = json.loads(data)
            if isinstance(chunk, dict) and chunk.get("error"):
                if acc.error is None:
                    acc.error = _error_fields(chunk)
                return
            acc.events += 1
            acc.id = acc.id or chunk.get("id")
            acc.model = acc.model or chunk.get("model")
            if chunk.get("usage"):
                acc.usage = _openai_usage(chunk["usage"])
            for choice in chunk.get("choices", [])[:1]:
                content = (choice.get("delta") or {}).get("content")
                if content:
                    acc.pieces.append(content)
                if choice.get("finish_reason") is not None:
                    acc.finish_reason = choice["finish_reason"]
            continue
        if name is None or name == "ping" or not data:
            continue  # what the anthropic SDK skips
        event = json.loads(data)
        if name == "error":
            if acc.error is None:
                acc.error = _error_fields(event)
            return
        acc.events += 1
        kind = event.get("type")
        if kind == "message_start":
            message = event["message"]
            acc.id, acc.model = message.get("id"), message.get("model")
            input_tokens = message.get("usage", {}).get("input_tokens", 0)
        elif kind == "content_block_delta":
            delta = event["delta"]
            if delta.get("type") == "text_delta" and delta.get("text"):
                acc.pieces.append(delta["text"])
        elif kind == "message_delta":
            acc.finish_reason = event["delta"].get("stop_reason")
            usage = event.get("usage", {})
            if usage.get("input_tokens") is not None:
                input_tokens = usage["input_tokens"]
            acc.usage = {"input_tokens": input_tokens, "output_tokens": usage["output_tokens"]}


def parse_sse(text: str) -> list[tuple[str | None, str]]:
    """(event name, data) of each complete event in a text/event-stream body.

    The WHATWG rules: CRLF, CR or LF line ends; ``field: value`` with one optional
    space stripped; data lines joined with "\\n"; comments and unknown fields ignored;
    an event is dispatched at a blank line unless its data is empty, and one left
    unterminated at the end of the body is dropped, as browsers (and the SDKs) do.
    """
    events: list[tuple[str | None, str]] = []
    name: str | None = None
    data: list[str] = []
    lines = _LINE_END.split(text.removeprefix("\ufeff"))
    # The last element follows the last line end: an unterminated line, or "".
    for line in lines[:-1]:
        if not line:
            if joined := "\n".join(data):
                events.append((name, joined))
            name, data = None, []
            continue
        if line.startswith(":"):
            continue
        key, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if key == "event":
            name = value
        elif key == "data":
            data.append(value)
    return events
