"""MkDocs hook: LaTeX maths becomes MathML at build time, so pages show formulas with no script and no network.

`pymdownx.arithmatex` (generic mode) wraps `$...$` in `<span class="arithmatex">\\(...\\)</span>` and `$$...$$`
in `<div class="arithmatex">\\[...\\]</div>`, for a JavaScript renderer to pick up in the browser. Here each of
those is converted with `latex2mathml` (pure Python) into MathML, which browsers render natively; this runs on
every page, the API reference included, after the Markdown (docstrings too) has become HTML. A formula that
`latex2mathml` cannot convert fails the build, naming the page and the formula.
"""

from __future__ import annotations

import html
import re
from typing import Any

from latex2mathml.converter import convert

_ARITHMATEX = re.compile(
    r'<(?P<tag>span|div) class="arithmatex">\s*\\(?P<open>[(\[])(?P<tex>.*?)\\[)\]]\s*</(?P=tag)>', re.DOTALL
)


# latex2mathml lays out `split` (and `align*`) as a table but not amsmath's `aligned`, the same alignment.
_ALIGNED = re.compile(r"\\(begin|end)\{aligned\}")
# latex2mathml keeps escaped characters of `\text{...}` (`decay\_rate`) as written.
_ESCAPED = re.compile(r"\\([_%&#$])")
# A command latex2mathml does not know comes out as its raw name (`\foo`) in a text node.
_RAW_COMMAND = re.compile(r">[^<]*\\[^<]*<")


def to_mathml(tex: str, display: bool) -> str:
    """MathML of one LaTeX formula, `display="block"` for a `$$...$$` block.

    Raises:
        ValueError: if a LaTeX command is left unconverted.
    """
    mathml = convert(_ALIGNED.sub(r"\\\1{split}", tex.strip()), display="block" if display else "inline")
    mathml = _ESCAPED.sub(r"\1", mathml)
    raw = _RAW_COMMAND.search(mathml)
    if raw:
        raise ValueError(f"unconverted LaTeX command in {raw.group(0)[1:-1]!r}")
    return mathml


def on_page_content(content: str, page: Any, config: Any, files: Any) -> str:
    """Replaces every arithmatex span/div of the page's HTML by its MathML."""

    def replace(match: re.Match[str]) -> str:
        tex = html.unescape(match.group("tex"))
        try:
            mathml = to_mathml(tex, display=match.group("open") == "[")
        except Exception as error:  # latex2mathml raises several types; the build must name the formula
            raise ValueError(
                f"{page.file.src_uri}: cannot convert the formula {tex!r} to MathML: {error}"
            ) from error
        if match.group("tag") == "div":
            return f'<div class="arithmatex">{mathml}</div>'
        return f'<span class="arithmatex">{mathml}</span>'

    return _ARITHMATEX.sub(replace, content)
