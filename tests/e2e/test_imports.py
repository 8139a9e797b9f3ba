"""A server imports what its configuration uses, and nothing more.

Every module a process imports stays in its memory and is paid for at each
start; a pass-through proxy has no use for a YAML parser (it read no file), the
OpenAI <-> Anthropic translations (it translates nothing), nor, on llhttp, h11. The servers run
as users run them (``python -m adapters.<module>``); a ``sitecustomize`` put on
their path writes the modules they imported when they exit.
"""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

from tests.e2e._helpers import CHAT, chat_body, http_client, iter_events, stop
from tests.support.mock_upstream import MockUpstream
from tests.support.proxy_process import StartProxy

#: module -> what would need it (none of it in a pass-through exchange)
UNUSED = {
    "yaml": "a configuration file",
    "core.gateway._chat_request_to_messages": "a translated request",
    "core.gateway._chat_response_to_messages": "a translated request",
    "core.gateway._messages_request_to_chat": "a translated request",
    "core.gateway._messages_response_to_chat": "a translated request",
}
#: ... and, by adapter, what that adapter does not use either
UNUSED_BY = {"httptools": {"h11": "the h11 server"}, "h11": {}, "trio": {}}

_DUMP = """
import atexit, os, sys

def _dump():
    with open(os.environ["IMPORTED_MODULES_FILE"], "w", encoding="utf-8") as f:
        f.write("\\n".join(sorted(sys.modules)))

atexit.register(_dump)
"""


@pytest.mark.parametrize("adapter", ["h11", "trio", "httptools"])
def test_a_pass_through_server_imports_nothing_its_configuration_does_not_use(
    start_proxy: StartProxy, mock_upstream: MockUpstream, tmp_path: Path, adapter: str
) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(textwrap.dedent(_DUMP), encoding="utf-8")
    dump = tmp_path / "modules.txt"
    path = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH")) if p)
    proxy = start_proxy(
        "--base-url",
        mock_upstream.base_url,
        env={"PYTHONPATH": path, "IMPORTED_MODULES_FILE": str(dump)},
    )
    with http_client(proxy) as client:
        answer = client.post(CHAT, json=chat_body())
        assert answer.status_code == 200
        with client.stream("POST", CHAT, json=chat_body(stream=True)) as stream:
            assert stream.status_code == 200
            assert [e.data for e in iter_events(stream)][-1] == "[DONE]"
    assert stop(proxy) == 0
    imported = set(dump.read_text(encoding="utf-8").split("\n"))
    assert {"core", "core.gateway._plan", "core.gateway._usage"} <= imported  # the dump works
    unused = {**UNUSED, **UNUSED_BY[adapter]}
    loaded = {module: why for module, why in unused.items() if module in imported}
    assert not loaded, f"imported although only these would use them: {loaded}"
