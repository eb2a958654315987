"""Griffe extension: render the library's reStructuredText-flavoured docstrings as Markdown.

The docstrings use Google-style sections (``Args:``, ``Returns:``) with a few reST constructs
that Markdown does not know. This extension rewrites them when the package is loaded, before
mkdocstrings parses the docstrings, so that the sources stay as they are (and read well in
``help()``):

* ``.. math::`` blocks become ``$$ ... $$`` blocks and ``:math:`x``` becomes ``$x$``
  (pymdownx.arithmatex, typeset by MathJax in the browser);
* a paragraph ending in ``::`` followed by an indented literal block becomes a fenced code
  block (Python when it parses as Python, text otherwise);
* Google ``Args:`` entries naming several parameters at once (``a, b: text``) are split
  into one entry per parameter (griffe's parser takes one name per entry);
* the roles ``:class:``, ``:func:``, ``:meth:``, ``:mod:``, ``:attr:``, ``:data:``,
  ``:exc:`` and ``:obj:`` become optional cross-references: a link where the target is
  documented on the site, plain code otherwise (never a warning).
"""

from __future__ import annotations

import ast
import re
import textwrap
from typing import Any

import griffe

_ROLE = re.compile(r":(class|func|meth|mod|attr|data|exc|obj|math):`([^`]+)`")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _block(lines: list[str], start: int, base: int) -> tuple[list[str], int]:
    """The lines from ``start`` indented deeper than ``base`` (blank lines inside included)."""
    end = start
    while end < len(lines) and (not lines[end].strip() or _indent(lines[end]) > base):
        end += 1
    while end > start and not lines[end - 1].strip():
        end -= 1
    return lines[start:end], end


def _language(code: str) -> str:
    try:
        ast.parse(code)
    except SyntaxError:
        return "text"
    return "python"


def _blocks(text: str) -> str:
    """Turn ``.. math::`` directives and ``::`` literal blocks into Markdown blocks."""
    lines = text.splitlines()
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        base = _indent(line)
        pad = " " * base
        if stripped.startswith(".. math::"):
            inline = stripped[len(".. math::"):].strip()
            body, i = _block(lines, i + 1, base)
            maths = textwrap.dedent("\n".join(body)).strip("\n").splitlines()
            out += ["", pad + "$$", *(pad + m if m else "" for m in ([inline] if inline else [])
                                      + maths), pad + "$$", ""]
            continue
        if stripped.endswith("::") and not stripped.startswith(".."):
            body, end = _block(lines, i + 1, base)
            if any(b.strip() for b in body):
                head = line.rstrip()[:-2].rstrip()
                if head.strip():
                    out.append(head + ":")
                code = textwrap.dedent("\n".join(body)).strip("\n")
                fence = [pad + "```" + _language(code),
                         *(pad + c if c else "" for c in code.splitlines()), pad + "```"]
                out += ["", *fence, ""]
                i = end
                continue
        out.append(line)
        i += 1
    return "\n".join(out)


_SECTION = re.compile(r"^\s*(Args|Arguments|Parameters|Keyword Args|Other Parameters):\s*$")
_MULTI = re.compile(r"^(\s+)(\*{0,2}\w+(?:\s*,\s*\*{0,2}\w+)+)(\s*\([^)]*\))?:(\s.*)?$")


def _split_args(text: str) -> str:
    """Split ``a, b: text`` entries of Google argument sections into one entry per name."""
    lines = text.splitlines()
    out: list[str] = []
    section = None  # indentation of the current argument section's header
    i = 0
    while i < len(lines):
        line = lines[i]
        if _SECTION.match(line):
            section = _indent(line)
        elif line.strip() and section is not None and _indent(line) <= section:
            section = None
        match = _MULTI.match(line) if section is not None else None
        if match:
            pad, names, kind, desc = match.groups()
            more, i = _block(lines, i + 1, len(pad))
            for name in re.split(r"\s*,\s*", names):
                out += [f"{pad}{name}{kind or ''}:{desc or ''}", *more]
            continue
        out.append(line)
        i += 1
    return "\n".join(out)


def _target(obj: griffe.Object, name: str) -> str:
    """Best-effort full path of a role's target; unresolved names are returned as given."""
    if name.startswith("."):
        return obj.module.path + name
    if "." not in name:
        try:
            return obj.resolve(name)
        except Exception:  # noqa: BLE001 - any failure leaves the name unlinked
            return name
    head, _, rest = name.partition(".")
    try:
        return obj.resolve(head) + "." + rest
    except Exception:  # noqa: BLE001
        return name


def _roles(text: str, obj: griffe.Object) -> str:
    def replace(match: re.Match[str]) -> str:
        role, content = match.groups()
        if role == "math":
            return f"${content}$"
        short = content.startswith("~")
        name = content.lstrip("~")
        title = name.rsplit(".", 1)[-1] if short or name.startswith(".") else name
        if role in ("func", "meth"):
            title += "()"
        return (f'<autoref identifier="{_target(obj, name)}" optional>'
                f"<code>{title}</code></autoref>")

    parts = re.split(r"(```.*?```)", text, flags=re.DOTALL)  # leave code blocks alone
    return "".join(p if p.startswith("```") else _ROLE.sub(replace, p) for p in parts)


def _walk(obj: griffe.Object, seen: set[int]) -> Any:
    if id(obj) in seen:
        return
    seen.add(id(obj))
    yield obj
    for member in obj.members.values():
        if not member.is_alias:
            yield from _walk(member, seen)


class RstToMarkdown(griffe.Extension):
    """Rewrite every docstring of a loaded package (see the module docstring)."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        for obj in _walk(pkg, set()):
            if obj.docstring is not None:
                obj.docstring.value = _roles(_split_args(_blocks(obj.docstring.value)), obj)
