"""``python -m adapters.keys``: a new key and the config line that accepts it; hashing."""

from __future__ import annotations

import hashlib
import io
import pathlib
import subprocess
import sys
from typing import Any

import pytest
import yaml

from adapters.keys import PREFIX, main
from core import Proxy, ProxyConfig, RequestEnded, RequestReceived
from core._state import State
from core.policies import AuthMiddleware


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def new_key(name: str, capsys: pytest.CaptureFixture[str]) -> tuple[str, dict[str, Any]]:
    code, out, _ = run(["new", name], capsys)
    assert code == 0
    lines = out.splitlines()
    (key_line,) = [line for line in lines if line.startswith("key ")]
    key = key_line.rsplit(" ", 1)[1]
    (entry_line,) = [line for line in lines if line.lstrip().startswith("- {")]
    (entry,) = yaml.safe_load(entry_line)
    return key, entry


def test_new_prints_a_key_whose_sha256_is_on_the_config_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    key, entry = new_key("alice@team", capsys)
    assert key.startswith(PREFIX)
    assert len(key) >= len(PREFIX) + 43  # 256 random bits, URL-safe
    assert entry == {"name": "alice@team", "key_sha256": hashlib.sha256(key.encode()).hexdigest()}


def test_the_printed_config_line_makes_the_proxy_accept_the_key(
    capsys: pytest.CaptureFixture[str],
) -> None:
    key, entry = new_key("bob", capsys)
    AuthMiddleware(keys=[entry])  # valid as it is printed
    cfg = ProxyConfig.model_validate(
        {"upstream": {"base_url": "http://up.test"}, "middleware": [{"auth": {"keys": [entry]}}]}
    )
    ex = Proxy(cfg).exchange(exchange_id="k", now=0.0, wall_time=0.0)
    headers = [(b"authorization", b"Bearer " + key.encode())]
    ex.handle(RequestReceived(method=b"GET", target=b"/v1/models", headers=headers), now=0.0)
    ex.handle(RequestEnded(), now=0.0)
    assert ex.state is State.AWAIT_UPSTREAM
    assert ex.key.name == "bob"


def test_new_keys_differ(capsys: pytest.CaptureFixture[str]) -> None:
    assert new_key("a", capsys)[0] != new_key("a", capsys)[0]


def test_hash_reads_the_key_from_stdin(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("  sk-sp-secret \n"))
    code, out, _ = run(["hash"], capsys)
    assert code == 0
    assert out == hashlib.sha256(b"sk-sp-secret").hexdigest() + "\n"


def test_hash_with_nothing_on_stdin_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    with pytest.raises(SystemExit) as caught:
        main(["hash"])
    assert caught.value.code == 2
    assert "no key on stdin" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["new", "bad name"], ["new"], [], ["rotate"]])
def test_bad_arguments_are_a_usage_error(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as caught:
        main(argv)
    assert caught.value.code == 2
    out, err = capsys.readouterr()
    assert out == "" and "usage: python -m adapters.keys" in err


def test_runs_as_a_module() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "adapters.keys", "hash"],
        input="sk-sp-x\n",
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
        cwd=pathlib.Path(__file__).resolve().parents[2],
    )
    assert done.stdout.strip() == hashlib.sha256(b"sk-sp-x").hexdigest()
