"""A server imports what its configuration uses, and nothing more.

Every module a process imports stays in its memory and is paid for at each
start; a pass-through proxy has no use for a YAML parser (it read no file), the
OpenAI <-> Anthropic translations (it translates nothing), nor, on llhttp, h11.
The servers run as users run them (``python -m adapters.<module>``) and write
the modules they imported when they exit.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e._helpers import CHAT, at_exit, chat_body, http_client, iter_events, stop
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


@pytest.mark.parametrize("adapter", ["h11", "trio", "httptools"])
def test_a_pass_through_server_imports_nothing_its_configuration_does_not_use(
    start_proxy: StartProxy, mock_upstream: MockUpstream, tmp_path: Path, adapter: str
) -> None:
    env, found = at_exit(tmp_path, "import sys\nout.write('\\n'.join(sorted(sys.modules)))")
    proxy = start_proxy("--base-url", mock_upstream.base_url, env=env)
    with http_client(proxy) as client:
        answer = client.post(CHAT, json=chat_body())
        assert answer.status_code == 200
        with client.stream("POST", CHAT, json=chat_body(stream=True)) as stream:
            assert stream.status_code == 200
            assert [e.data for e in iter_events(stream)][-1] == "[DONE]"
    assert stop(proxy) == 0
    imported = set(found.read_text(encoding="utf-8").split("\n"))
    assert {"core", "core.gateway._plan", "core.gateway._usage"} <= imported  # the report works
    unused = {**UNUSED, **UNUSED_BY[adapter]}
    loaded = {module: why for module, why in unused.items() if module in imported}
    assert not loaded, f"imported although only these would use them: {loaded}"
