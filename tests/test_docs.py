"""The built documentation site: no raw reST or LaTeX, every public name documented once, torch's arguments shown.

Builds the site once (`mkdocs build --strict`, a few seconds) into a temporary folder and reads its HTML.
"""

from __future__ import annotations

import html
import importlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PUBLIC_PACKAGES = [
    "rnn_stability.nn",
    "rnn_stability.functional",
    "rnn_stability.callbacks",
    "rnn_stability.data",
    "rnn_stability.demo",
]
# Left behind when a docstring or page is written in reST, or when maths is not rendered.
RAW_MARKUP = [":class:", ":math:", ":mod:", ":meth:", ":func:", ":attr:", ":obj:", "Example::", ".. math::"]
RAW_MATHS = ["\\(", "\\)", "\\[", "\\]", "$$", "\\frac", "\\sigma", "\\begin"]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return out


def _pages(site: Path) -> dict[str, str]:
    return {str(p.relative_to(site)): p.read_text() for p in site.rglob("*.html")}


def _text(page: str) -> str:
    """What a reader sees: the article's text, without tags, MathML or `<pre>` code blocks."""
    article = page[page.find("<article") : page.find("</article>")]
    article = re.sub(r"<math\b.*?</math>", " ", article, flags=re.DOTALL)
    article = re.sub(r"<pre\b.*?</pre>", " ", article, flags=re.DOTALL)
    return html.unescape(re.sub(r"<[^>]+>", " ", article))


def test_no_raw_rest_or_latex_in_any_page(site: Path) -> None:
    found = []
    for name, page in _pages(site).items():
        text = _text(page)
        found += [(name, marker) for marker in RAW_MARKUP + RAW_MATHS if marker in text]
    assert not found, found


def test_every_page_has_one_title_and_names_no_internal_issue(site: Path) -> None:
    # an included result file with a `# title` of its own would put a second H1 on its page
    titles = {
        name: len(re.findall(r"<h1\b", page)) for name, page in _pages(site).items() if "<article" in page
    }
    assert all(count == 1 for count in titles.values()), {n: c for n, c in titles.items() if c != 1}
    mentions = [name for name, page in _pages(site).items() if re.search(r"\b[Ii]ssue \d+", _text(page))]
    assert not mentions, mentions


def test_maths_is_mathml(site: Path) -> None:
    pages = _pages(site)
    formulas = [m for page in pages.values() for m in re.findall(r'class="arithmatex">(.{0,5})', page)]
    assert len(formulas) > 20
    assert all(f.startswith("<math") for f in formulas), {f for f in formulas if not f.startswith("<math")}
    # the guides and the API reference both have rendered formulas
    for name in ["guide/gradient-flow/index.html", "guide/modules/index.html", "api/functional/index.html"]:
        assert "<math" in pages[name], name


def _api_heading_ids(site: Path) -> list[str]:
    ids: list[str] = []
    for page in (site / "api").rglob("*.html"):
        ids += re.findall(r'<h[1-6] id="(rnn_stability\.[\w.]+)"', page.read_text())
    return ids


@pytest.mark.parametrize("package", PUBLIC_PACKAGES)
def test_every_public_name_is_documented_once(site: Path, package: str) -> None:
    ids = _api_heading_ids(site)
    for name in importlib.import_module(package).__all__:
        # documented under the package (`rnn_stability.nn.LSTM`) or under its defining module
        # (`rnn_stability.demo.app.run_demo`); a class's methods are headings one level further down
        matches = [i for i in ids if i.startswith(package + ".") and i.endswith("." + name)]
        assert len(matches) == 1, (name, matches)


def _signature(site: Path, page: str, identifier: str) -> str:
    text = (site / page).read_text()
    start = text.index(f'id="{identifier}"')
    block = re.search(r'<div class="doc-signature highlight"><pre>(.*?)</pre>', text[start:], re.DOTALL)
    assert block is not None, identifier
    return html.unescape(re.sub(r"<[^>]+>", "", block.group(1)))


@pytest.mark.parametrize("name", ["LSTM", "GRU", "LSTMCell", "GRUCell"])
def test_module_signatures_show_torch_arguments(site: Path, name: str) -> None:
    signature = _signature(site, "api/nn/index.html", f"rnn_stability.nn.{name}")
    for argument in ["input_size", "hidden_size", "bias", "device", "dtype", "layer_norm"]:
        assert argument in signature, (name, argument, signature)
    if name in ("LSTM", "GRU"):
        for argument in ["num_layers", "batch_first", "dropout", "bidirectional", "residual"]:
            assert argument in signature, (name, argument, signature)
        assert "*args" not in signature
    assert ("proj_size" in signature) == (name == "LSTM")


def test_getting_started_script_runs_as_shown(site: Path, tmp_path: Path) -> None:
    """The page shows `docs/snippets/first_trainer.py` whole, and that file trains as it is."""
    script = ROOT / "docs" / "snippets" / "first_trainer.py"
    page = (site / "getting-started" / "index.html").read_text()
    shown = html.unescape(re.sub(r"<[^>]+>", "", page))
    assert all(line in shown for line in script.read_text().splitlines() if line.strip())
    done = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    mse = float(re.search(r"final training MSE: ([\d.]+)", done.stdout).group(1))  # type: ignore[union-attr]
    assert mse < 0.1  # well below the 0.167 of predicting the mean
    assert list(tmp_path.glob("lightning_logs/**/gradient_flow/heatmap_rnn.png"))


def test_code_blocks_fit_the_page_column() -> None:
    """At a 1280 px window the content column shows about 80 characters of code; longer lines are cut."""
    too_long = []
    for page in sorted((ROOT / "docs").rglob("*.md")):
        inside = False
        for number, line in enumerate(page.read_text().splitlines(), 1):
            if line.lstrip().startswith("```"):
                inside = not inside
            elif inside and len(line) > 80:
                too_long.append(f"{page.relative_to(ROOT)}:{number}")
    script = ROOT / "docs" / "snippets" / "first_trainer.py"
    too_long += [
        f"{script.name}:{n}" for n, line in enumerate(script.read_text().splitlines(), 1) if len(line) > 80
    ]
    assert not too_long, too_long
