"""The README's embedding example runs as written."""

from __future__ import annotations

import contextlib
import io
import pathlib
import re

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_starts_with_exactly_two_setup_commands() -> None:
    text = README.read_text()
    first_section = text.split("\n## ", 1)[0]
    commands = re.findall(r"```sh\n(.*?)```", first_section, flags=re.S)[:2]
    assert commands == [
        "pip install -e . && python -m adapters.h11_server --port 3000\n",
        "pip install -e '.[test]' && python -m pytest\n",
    ]


def test_embedding_example_runs() -> None:
    (example,) = python_blocks()
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(example, str(README), "exec"), {"__name__": "readme"})
    assert out.getvalue() == "This is the sansproxy mock. You said: Hi\n"
