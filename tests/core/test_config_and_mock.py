"""The config model's validation, the mock provider's answers, odd corners of the core."""

from __future__ import annotations

import inspect
import json
import re
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Union, get_args, get_origin

import pytest
import yaml
from pydantic import BaseModel, ValidationError

from core import (
    LocalProtocolError,
    Origin,
    ProtocolError,
    Proxy,
    ProxyConfig,
    RemoteProtocolError,
    SendUpstreamRequest,
)
from core._config import ConfigProblem, UpstreamConfig
from core._middleware import _option_names
from core._proxy import _builtin_middleware
from core.policies import TraceMiddleware

from .playbook import Playbook, client_view, config


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://x", "invalid value 'ftp://x' (expected a URL starting with http:// or https://)"),
        ("http://", "invalid value 'http://' (expected a URL naming a host)"),
        (
            "http://h/?q=1",
            "invalid value 'http://h/?q=1' (expected a URL without a query or fragment)",
        ),
        (
            "http://h:99999",
            "invalid value 'http://h:99999' (expected a URL whose port is from 0 to 65535)",
        ),
        ("http://user:pw@h", "a URL with credentials (not allowed: put the key in api_key)"),
    ],
)
def test_bad_base_urls_are_refused_with_a_reason(url: str, message: str) -> None:
    with pytest.raises(ValidationError) as caught:
        UpstreamConfig(base_url=url)
    (error,) = caught.value.errors()
    assert error["loc"] == ("base_url",)
    assert str(error["ctx"]["error"]) == message
    assert "pw" not in str(caught.value).replace("http://user:pw@h", "")


def problem(tree: dict[str, Any]) -> ConfigProblem:
    """The one problem validating ``tree`` finds (a ``ConfigProblem`` a validator raised)."""
    with pytest.raises(ValidationError) as caught:
        ProxyConfig.model_validate(tree)
    (error,) = caught.value.errors()
    cause = error["ctx"]["error"]
    assert isinstance(cause, ConfigProblem)
    return cause.within(*error["loc"])


def test_middleware_entries_are_normalised_and_checked() -> None:
    cfg = ProxyConfig.model_validate({"middleware": ["trace", {"x:Y": None}]})
    assert cfg.middleware == ({"trace": {}}, {"x:Y": {}})
    assert str(problem({"middleware": ["trace", {"a": {}, "b": {}}]})) == (
        "middleware[1]: names 2 middleware (a, b) in one entry "
        "(one per entry: a name, or one name mapped to its options)"
    )
    assert str(problem({"middleware": [3]})) == (
        "middleware[0]: must be a middleware name, or one name mapped to its options, not 3"
    )
    with pytest.raises(ValidationError, match="valid dictionary"):
        ProxyConfig.model_validate({"middleware": [{"trace": 3}]})
    with pytest.raises(ValidationError):
        ProxyConfig.model_validate({"middleware": "trace"})
    with pytest.raises(ValidationError, match="Extra inputs"):
        ProxyConfig.model_validate({"limits": {"max_bodysize": 1}})


def test_trace_needs_a_directory() -> None:
    with pytest.raises(ValueError, match="'dir' must name a directory"):
        TraceMiddleware(dir="")


def test_protocol_error_is_abstract() -> None:
    with pytest.raises(TypeError):
        ProtocolError("x")
    assert LocalProtocolError("x").error_status_hint == 400
    assert RemoteProtocolError("x", error_status_hint=502).error_status_hint == 502


def test_ipv6_and_idn_upstream_hosts() -> None:
    proxy = Proxy(ProxyConfig(upstream=UpstreamConfig(base_url="http://[::1]:8080")))
    pb = Playbook(proxy)
    (cmd,) = pb.request(b"GET", b"/v1/models")
    assert isinstance(cmd, SendUpstreamRequest)
    assert cmd.origin == Origin(scheme="http", host="::1", port=8080)
    assert (b"host", b"[::1]:8080") in cmd.headers
    proxy = Proxy(ProxyConfig(upstream=UpstreamConfig(base_url="https://bücher.example")))
    (cmd,) = Playbook(proxy).request(b"GET", b"/v1/models")
    assert isinstance(cmd, SendUpstreamRequest)
    assert cmd.origin.host == "xn--bcher-kva.example"


def chat(body: dict[str, Any], delay: float = 0.0) -> tuple[int | None, bytes]:
    pb = Playbook(config(mock={"stream_delay": delay}))
    status, _, data, complete = client_view(
        pb.request(b"POST", b"/v1/chat/completions", json.dumps(body).encode())
    )
    assert complete
    return status, data


def test_mock_stream_without_delay_is_sent_at_once() -> None:
    status, data = chat(
        {"model": "m", "stream": True, "messages": [{"role": "user", "content": "x"}]}
    )
    assert status == 200 and data.endswith(b"data: [DONE]\n\n")
    assert b'"usage"' not in data  # not asked for


def test_mock_honours_max_tokens_and_content_parts() -> None:
    status, data = chat(
        {
            "model": "m",
            "max_tokens": 3,
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "hello"}, "junk"]},
            ],
        }
    )
    answer = json.loads(data)
    assert answer["choices"][0]["message"]["content"] == "This is the"
    assert answer["choices"][0]["finish_reason"] == "length"
    assert answer["usage"]["completion_tokens"] == 3


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "m"}, "messages"),
        ({"model": "m", "messages": []}, "messages"),
        ({"messages": [{"role": "user", "content": "x"}]}, "model"),
        ({"model": "m", "messages": ["hi"]}, "messages"),
    ],
)
def test_mock_refuses_bad_chat_requests_naming_the_param(body: dict[str, Any], param: str) -> None:
    status, data = chat(body)
    assert status == 400 and json.loads(data)["error"]["param"] == param


def test_mock_refuses_a_body_that_is_not_an_object() -> None:
    pb = Playbook(config())
    status, _, data, _ = client_view(pb.request(b"POST", b"/v1/chat/completions", b"[1]"))
    assert status == 400 and "JSON object" in json.loads(data)["error"]["message"]


def test_mock_embeddings_are_deterministic() -> None:
    def embed(inp: Any) -> tuple[int | None, Any]:
        pb = Playbook(config())
        body = json.dumps({"model": "mock-embedding", "input": inp}).encode()
        status, _, data, _ = client_view(pb.request(b"POST", b"/v1/embeddings", body))
        return status, json.loads(data)

    status, a = embed("hello")
    _, b = embed(["hello", "world"])
    assert status == 200 and a["object"] == "list"
    assert a["data"][0]["embedding"] == b["data"][0]["embedding"]
    assert a["data"][0]["embedding"] != b["data"][1]["embedding"]
    assert len(a["data"][0]["embedding"]) == 16
    assert all(-1.0 <= v <= 1.0 for v in a["data"][0]["embedding"])
    assert embed([])[0] == 400
    pb = Playbook(config())
    body = json.dumps({"input": "x"}).encode()
    status, _, data, _ = client_view(pb.request(b"POST", b"/v1/embeddings", body))
    assert status == 400 and json.loads(data)["error"]["param"] == "model"


def test_mock_lists_its_models() -> None:
    pb = Playbook(config())
    status, _, data, _ = client_view(pb.request(b"GET", b"/v1/models"))
    assert status == 200
    assert [m["id"] for m in json.loads(data)["data"]] == ["mock-gpt", "mock-embedding"]


# -- configuration problems: where, what is wrong, what is allowed ----------------------------

PROVIDERS = {"oai": {"base_url": "http://oai.test"}, "claude": {"base_url": "http://c.test"}}


@pytest.mark.parametrize(
    ("tree", "path", "message"),
    [
        (
            {"providers": PROVIDERS, "models": {"fast": [{"provider": "oia", "model": "m"}]}},
            ("models", "fast", "deployments", 0, "provider"),
            "unknown provider 'oia' (providers: oai, claude; did you mean 'oai'?)",
        ),
        (
            {
                "providers": PROVIDERS,
                "models": {
                    "fast": [{"provider": "oai", "model": "m"}],
                    "best": {
                        "deployments": [{"provider": "oai", "model": "n"}],
                        "fallbacks": ["fsat"],
                    },
                },
            },
            ("models", "best", "fallbacks", 0),
            "'fsat' is not another public model (others: fast; did you mean 'fast'?)",
        ),
        (
            {"providers": PROVIDERS, "models": {"fast": []}},
            ("models", "fast", "deployments"),
            "lists no deployment (at least one: {provider, model})",
        ),
        (
            {"models": {"fast": [{"provider": "oai", "model": "m"}]}},
            ("models",),
            "set without providers (each deployment names one of providers)",
        ),
        (
            {"upstream": {"base_url": "http://u.test"}, "providers": PROVIDERS},
            ("upstream",),
            "set together with providers or models (upstream, or --base-url, is the "
            "one-provider shorthand: use it, or providers and models, not both)",
        ),
        (
            {"limits": {"backend": "redis"}},
            ("limits",),
            "missing option 'redis_url' (backend 'redis' needs it: redis://host:port/db)",
        ),
    ],
    ids=["unknown-provider", "bad-fallback", "no-deployment", "no-providers", "both", "redis"],
)
def test_validators_say_where_what_and_what_is_allowed(
    tree: dict[str, Any], path: tuple[str | int, ...], message: str
) -> None:
    found = problem(tree)
    assert (found.path, found.problem) == (path, message)


def proxy_problem(*middleware: Any, **tree: Any) -> ConfigProblem:
    with pytest.raises(ConfigProblem) as caught:
        Proxy(ProxyConfig.model_validate({"middleware": list(middleware), **tree}))
    return caught.value


TRACE_OPTIONS = "dir, max_body, max_events, rotate, max_age, max_bytes"


@pytest.mark.parametrize(
    ("middleware", "text"),
    [
        (
            [{"trace": {"dri": "/tmp/t"}}],
            "middleware[0].trace: unknown option 'dri' "
            f"(options: {TRACE_OPTIONS}; did you mean 'dir'?)",
        ),
        (
            ["validate", {"trace": {}}],
            f"middleware[1].trace: missing option 'dir' (required; options: {TRACE_OPTIONS})",
        ),
        (
            [{"trace": {"dir": "/tmp/t", "colour": "red"}}],
            f"middleware[0].trace: unknown option 'colour' (options: {TRACE_OPTIONS})",
        ),
        (
            [{"trace": {"dir": "/tmp/t", "rotate": "week"}}],
            "middleware[0].trace: 'rotate' must be 'hour' or 'day', not 'week'",
        ),
        (
            [{"validate": {"max_json_items": 3}}],
            "middleware[0].validate: unknown option 'max_json_items' (options: none)",
        ),
        (
            [{"rate_limit": {"rpm": 3}}],
            "middleware[0].rate_limit: unknown option 'rpm' (rate_limit takes none: limits are "
            "set on auth keys (rpm, tpm, budget) and on models (limits: {rpm, tpm}))",
        ),
        (
            [{"retry": {"attempt": 2}}],
            "middleware[0].retry: unknown option 'attempt' (options: attempts, backoff, "
            "max_backoff, timeout, on_status, on_failure; did you mean 'attempts'?)",
        ),
        (
            ["retries"],
            "middleware[0]: unknown middleware 'retries' (built-ins: trace, auth, validate, "
            "guardrails, rate_limit, retry; custom ones: 'package.module:attr'; "
            "did you mean 'retry'?)",
        ),
        (
            ["no_such_module_x:Thing"],
            "middleware[0].no_such_module_x:Thing: cannot import 'no_such_module_x' "
            "(No module named 'no_such_module_x')",
        ),
        (
            ["json:NoSuchThing"],
            "middleware[0].json:NoSuchThing: json has no callable 'NoSuchThing' "
            "(a class or function)",
        ),
        (
            [{"auth": {"keys": [{"name": "a", "key_sha256": "xx"}]}}],
            "middleware[0].auth.keys[0].key_sha256: must be 64 hex digits "
            "(python -m adapters.keys new NAME)",
        ),
        (
            [{"auth": {"keys": [{"name": "a", "key_sha256": "ab" * 32, "rpm": 3}]}}],
            "middleware[0].auth.keys[0]: sets rpm without the rate_limit middleware "
            "(add rate_limit after auth to enforce it)",
        ),
        (
            ["retry", "validate", "retry"],
            "middleware[2]: 'retry' is listed twice, first at middleware[0] "
            "(each built-in runs once)",
        ),
        (
            ["rate_limit", "auth"],
            "middleware[1]: auth is listed after rate_limit (middleware[0]), which reads the "
            "key auth finds (list auth before rate_limit)",
        ),
    ],
    ids=lambda value: None if isinstance(value, list) else value.split(":")[0],
)
def test_middleware_problems_are_named_from_the_factory_signature(
    middleware: list[Any], text: str
) -> None:
    found = proxy_problem(*middleware)
    assert str(found) == text
    assert "__init__" not in text and "keyword argument" not in text


def test_a_custom_factory_signature_lists_its_options() -> None:
    found = proxy_problem({"tests.core.test_config_and_mock:custom": {"threshhold": 1}})
    assert found.path == ("middleware", 0, "tests.core.test_config_and_mock:custom")
    assert found.problem == (
        "unknown option 'threshhold' (options: threshold, label; did you mean 'threshold'?)"
    )


def custom(*, threshold: int, label: str = "x") -> object:
    """A custom middleware factory (for the test above)."""
    return types.SimpleNamespace(threshold=threshold, label=label)


# -- config.example.yaml: starts as is, documents every option with its default ------------------

EXAMPLE = Path(__file__).resolve().parents[2] / "config.example.yaml"
#: Options whose place in the example is another's: providers take upstream's options.
ALIASES = {("providers", "*"): ("upstream",)}
#: Built-in middleware options the example shows with an example value, not the default.
MIDDLEWARE_EXAMPLES = {
    ("trace", "dir"),
    ("auth", "keys"),
    ("guardrails", "deny"),
    ("guardrails", "redact"),
}


def example_uncommented() -> str:
    """The example with every option uncommented: a line ``# X`` is kept as ``X`` when X
    is an option (a lower-case name and a colon) or indented under one; prose is left out."""
    out = []
    for line in EXAMPLE.read_text(encoding="utf-8").splitlines():
        if line and not line.startswith("#"):
            out.append(line)
            continue
        rest = line[2:] if line.startswith("# ") else ""
        if re.match(r"[a-z_]+:", rest) or rest.startswith(" "):
            out.append(rest)
    return "\n".join(out) + "\n"


def _example_tree() -> dict[str, Any]:
    tree = yaml.safe_load(re.sub(r"\$\{(\w+)\}", r"env-\1", example_uncommented()))
    assert isinstance(tree, dict)
    for name, model in tree.get("models", {}).items():  # a model's short form
        if isinstance(model, list):
            tree["models"][name] = {"deployments": model}
    return tree


def _optional(annotation: Any) -> Any:
    if get_origin(annotation) in (Union, types.UnionType):
        (inner,) = [a for a in get_args(annotation) if a is not type(None)]
        return inner
    return annotation


def schema_options(
    model: type[BaseModel], prefix: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], Any]]:
    """Every option of the schema, as a path (``*``: any key or index) and its field."""
    for name, field in model.model_fields.items():
        path = (*prefix, name)
        yield path, field
        inner = _optional(field.annotation)
        element = (
            get_args(inner)[-1 if get_origin(inner) is dict else 0] if get_args(inner) else None
        )
        if isinstance(inner, type) and issubclass(inner, BaseModel):
            yield from schema_options(inner, path)
        elif isinstance(element, type) and issubclass(element, BaseModel):
            yield from schema_options(element, (*path, "*"))


def tree_paths(value: Any, prefix: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    items = (
        value.items()
        if isinstance(value, dict)
        else enumerate(value)
        if isinstance(value, list)
        else ()
    )
    for key, child in items:
        path = (*prefix, str(key))
        yield path, child
        yield from tree_paths(child, path)


def _matches(pattern: tuple[str, ...], path: tuple[str, ...]) -> bool:
    return len(pattern) == len(path) and all(
        p in ("*", q) for p, q in zip(pattern, path, strict=True)
    )


def _aliased(pattern: tuple[str, ...]) -> tuple[str, ...]:
    for alias, target in ALIASES.items():
        if pattern[: len(alias)] == alias:
            return (*target, *pattern[len(alias) :])
    return pattern


def test_the_example_config_documents_every_option_with_its_default() -> None:
    tree = _example_tree()
    present = dict(tree_paths(tree))
    missing, wrong = [], []
    for schema_path, field in schema_options(ProxyConfig):
        pattern = _aliased(schema_path)
        if not any(_matches(pattern, path) for path in present):
            missing.append(".".join(pattern))
            continue
        inner = _optional(field.annotation)
        if (
            "*" in pattern
            or pattern[0] in ("providers", "models", "middleware")  # filled with examples
            or field.is_required()
            or (isinstance(inner, type) and issubclass(inner, BaseModel))  # a section
        ):
            continue
        default = field.get_default(call_default_factory=True)
        expected = list(default) if isinstance(default, tuple) else default
        if present[pattern] != expected:
            wrong.append(f"{'.'.join(pattern)}: {present[pattern]!r}, the default is {default!r}")
    assert missing == []
    assert wrong == []
    # And every built-in middleware's options, each with its default unless an example.
    entries = {
        name: options or {}
        for item in tree["middleware"]
        for name, options in (item.items() if isinstance(item, dict) else [(item, {})])
    }
    for name, factory in _builtin_middleware(ProxyConfig()).items():
        assert name in entries, name
        accepted = _option_names(factory)[0]
        assert sorted(entries[name]) == sorted(accepted), name
        defaults = inspect.signature(factory).parameters
        for option, value in entries[name].items():
            default = defaults[option].default
            if (name, option) not in MIDDLEWARE_EXAMPLES:
                expected = list(default) if isinstance(default, tuple) else default
                assert value == expected, f"middleware {name}.{option}: {value!r} != {expected!r}"


def test_the_example_config_is_all_comments_so_it_is_the_defaults() -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    assert [line for line in text.splitlines() if line.strip() and not line.startswith("#")] == []
    assert yaml.safe_load(text) is None
