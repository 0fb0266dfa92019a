"""MkDocs hook: a benchmark table that has not been measured yet becomes a note instead of a broken build.

Pages include the measured tables with ``--8<-- "benchmarks/results/<script>.md"`` (pymdownx.snippets, with
``check_paths`` on, so a mistyped path fails ``mkdocs build --strict``). Result files are written by the
benchmark scripts; until a script has run, its include is replaced by a note saying how to produce it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

_INCLUDE = re.compile(r'^--8<-- "(benchmarks/results/(?P<name>[\w-]+)\.md)"\s*$', re.MULTILINE)


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    """Replaces includes of missing ``benchmarks/results/*.md`` files by a "not measured yet" note."""
    root = Path(config["config_file_path"]).parent

    def replace(match: re.Match[str]) -> str:
        if (root / match.group(1)).is_file():
            return match.group(0)
        name = match.group("name")
        return (
            f'!!! note "Not measured yet"\n    Run `python benchmarks/{name}.py` to write '
            f"`benchmarks/results/{name}.md`, then rebuild the docs."
        )

    return _INCLUDE.sub(replace, markdown)
