"""The documentation site builds in strict mode (a warning fails), offline, with every page.

This is what ``make docs`` runs (``mkdocs build --strict``); building it here makes a broken
cross-reference, a docstring that does not render or a page missing from the navigation fail
the test command.
"""

from __future__ import annotations

import socket
from pathlib import Path

import yaml
from mkdocs.commands.build import build
from mkdocs.config import load_config

ROOT = Path(__file__).resolve().parents[1]


def nav_pages(nav) -> list[str]:
    pages = []
    for item in nav:
        value = next(iter(item.values())) if isinstance(item, dict) else item
        pages += nav_pages(value) if isinstance(value, list) else [value]
    return pages


def test_every_page_and_tutorial_is_in_the_navigation():
    config = yaml.load((ROOT / "mkdocs.yml").read_text(), Loader=yaml.BaseLoader)
    pages = set(nav_pages(config["nav"]))
    docs = {p.relative_to(ROOT / "docs").as_posix() for p in (ROOT / "docs").rglob("*.md")}
    notebooks = {p.relative_to(ROOT).as_posix() for p in (ROOT / "tutorials").glob("*.ipynb")}
    assert docs | notebooks == pages


def test_site_builds_strict_and_offline(tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError(f"the docs build tried to open a connection: {args!r}")

    # Any plugin reaching for the network fails the build (and so this test).
    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setenv("NO_MKDOCS_2_WARNING", "1")
    monkeypatch.chdir(ROOT)
    config = load_config(str(ROOT / "mkdocs.yml"), strict=True, site_dir=str(tmp_path / "site"))
    build(config)

    site = tmp_path / "site"
    alm = (site / "api" / "dual_optim" / "index.html").read_text(encoding="utf-8")
    assert 'id="humancompatible_train.dual_optim.ALM"' in alm
    assert "arithmatex" in alm                    # the docstrings' maths is typeset
    assert ".. math::" not in alm and ":class:`" not in alm
    for notebook in sorted((ROOT / "tutorials").glob("*.ipynb")):
        page = (site / "tutorials" / notebook.stem / "index.html").read_text(encoding="utf-8")
        assert "Tutorial" in page and "jp-OutputArea" in page, notebook.name  # with outputs
    tutorial_1 = site / "tutorials" / "01_two_lines_demographic_parity" / "index.html"
    assert "data:image/png;base64" in tutorial_1.read_text(encoding="utf-8")  # figures too

