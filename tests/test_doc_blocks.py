"""Every Python code block of README.md and docs/*.md runs as printed.

The convention (stated at the top of docs/index.md): the blocks of one file run in order, in
one fresh namespace per file, from the repository root, on the bundled data; a block fenced
as ``python`` (or ``py``) is executed, any other fence (``text``, ``sh``, ``console``) is not.
"""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PYTHON = {"python", "py", "python3"}
FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^\n`]*)$")


def code_blocks(text: str) -> list[tuple[int, str, str]]:
    """(first line number, language, code) of every fenced block, in order."""
    blocks, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        fence, indent = match["fence"], len(match["indent"])
        language = (match["info"].split() or [""])[0].strip("{}.").lower()
        end = i + 1
        while end < len(lines) and not re.match(
                rf"^[ \t]*{re.escape(fence[0])}{{{len(fence)},}}[ \t]*$", lines[end]):
            end += 1
        body = [line[indent:] if line[:indent].strip() == "" else line
                for line in lines[i + 1:end]]
        blocks.append((i + 2, language, textwrap.dedent("\n".join(body))))
        i = end + 1
    return blocks


def test_fences_are_parsed():
    text = ("a\n```python\nx = 1\n```\n\n  ~~~~ text\n  y\n  ~~~~\n"
            "* item\n\n    ```py\n    z\n    ```\n")
    assert code_blocks(text) == [(3, "python", "x = 1"), (7, "text", "y"), (12, "py", "z")]


def test_there_are_python_blocks():
    assert any(lang in PYTHON for page in PAGES
               for _, lang, _ in code_blocks(page.read_text(encoding="utf-8")))


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_page_blocks_run_as_printed(page, monkeypatch, tmp_path):
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    namespace: dict = {"__name__": "__main__"}
    blocks = [b for b in code_blocks(page.read_text(encoding="utf-8")) if b[1] in PYTHON]
    for line, _, code in blocks:
        where = f"{page.relative_to(ROOT).as_posix()}:{line}"
        try:
            exec(compile(code, where, "exec"), namespace)
        except Exception as error:  # the failing block's place, then the original traceback
            raise AssertionError(f"the code block at {where} fails: {error!r}") from error
