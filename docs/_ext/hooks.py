"""MkDocs hook: publish the notebooks of ``tutorials/`` (outside ``docs/``) in the site.

The notebooks stay where readers of the repository look for them; this hook adds them to the
site's files before mkdocs-jupyter turns ``.ipynb`` files into pages (hence the priority).
"""

from __future__ import annotations

from pathlib import Path

from mkdocs.plugins import event_priority
from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[2]


@event_priority(100)
def on_files(files: Files, config) -> Files:
    for path in sorted((ROOT / "tutorials").glob("*.ipynb")):
        files.append(File(path.relative_to(ROOT).as_posix(), src_dir=str(ROOT),
                          dest_dir=config["site_dir"],
                          use_directory_urls=config["use_directory_urls"]))
    return files
