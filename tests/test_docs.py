"""The documentation: every ```python block in README.md and docs/ runs, the site builds with
warnings as errors, and a headless browser renders its home page and an API page.

The blocks of one file run in order in one namespace (a page's later examples use its earlier
ones), in a fresh working directory. A block that imports torch runs where torch is installed
and is passed over with a warning elsewhere (torch is optional; the blocks after it still run).
"""

from __future__ import annotations

import importlib.util
import os
import pathlib
import re
import shutil
import subprocess
import sys
import warnings

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
BLOCK = re.compile(r"^```python\n(.*?)^```\n", re.DOTALL | re.MULTILINE)


def python_blocks(path: pathlib.Path) -> list[tuple[int, str]]:
    text = path.read_text()
    return [(text.count("\n", 0, m.start()) + 2, m.group(1)) for m in BLOCK.finditer(text)]


PAGES_WITH_CODE = [p for p in PAGES if python_blocks(p)]


def test_the_readme_and_the_concept_pages_have_examples():
    names = {p.relative_to(ROOT).as_posix() for p in PAGES_WITH_CODE}
    assert {"README.md", "docs/getting-started.md", "docs/concepts/cells.md",
            "docs/concepts/unroll.md", "docs/concepts/training.md"} <= names  # fmt: skip


@pytest.mark.parametrize("path", PAGES_WITH_CODE, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_python_example_runs(path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": f"docs_example_{path.stem}"}
    has_torch = importlib.util.find_spec("torch") is not None
    for line, source in python_blocks(path):
        if re.search(r"^\s*import torch", source, re.MULTILINE) and not has_torch:
            warnings.warn(f"{path.name}:{line}: not run, torch is not installed", stacklevel=1)
            continue
        code = compile(source, f"{path.relative_to(ROOT)}:{line}", "exec")
        exec(code, namespace)


MKDOCS_QUIET = {"NO_MKDOCS_2_WARNING": "1", "DISABLE_MKDOCS_2_WARNING": "true"}


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> pathlib.Path:
    pytest.importorskip("mkdocs", reason="the docs extra is not installed")
    out = tmp_path_factory.mktemp("site")
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, **MKDOCS_QUIET})  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    return out


def test_the_site_builds_with_every_page(site):
    for page in ["index.html", "api/unroll/index.html", "concepts/cells/index.html",
                 "results/rnn/index.html", "notebooks/index.html",
                 "notebooks/01_cells_from_the_equations/index.html"]:  # fmt: skip
        assert (site / page).stat().st_size > 2000, page
    # the API page is generated from the docstrings, not written by hand
    assert "lengths" in (site / "api/unroll/index.html").read_text()
    # every file in benchmarks/results/ has its page
    for result in (ROOT / "benchmarks" / "results").glob("*.md"):
        assert (site / "results" / result.stem / "index.html").exists(), result.name


def _browser() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if found := shutil.which(name):
            return found
    if os.environ.get("CI"):
        pytest.fail("no headless browser: .ci/run installs Debian's chromium")
    pytest.skip("no chromium on this machine (apt-get install chromium)")


HEADLESS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run",
            "--hide-scrollbars", "--window-size=1280,900"]  # fmt: skip


@pytest.mark.parametrize(
    "page, expected",
    [("index.html", "Recurrent sequence models in JAX"),
     ("api/unroll/index.html", "Runs cell over the time axis")],
)  # fmt: skip
def test_a_browser_renders_the_home_page_and_an_api_page(site, tmp_path, page, expected):
    browser, url = _browser(), (site / page).as_uri()
    profile = ["--user-data-dir=" + str(tmp_path / "profile")]
    dom = subprocess.run([browser, *HEADLESS, *profile, "--dump-dom", url],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert expected in re.sub(r"<[^>]+>", "", dom.stdout)
    shot = tmp_path / "page.png"
    done = subprocess.run([browser, *HEADLESS, *profile, f"--screenshot={shot}", url],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0 and shot.exists(), done.stderr[-2000:]
    image = pytest.importorskip("PIL.Image").open(shot).convert("RGB")
    assert image.size == (1280, 900)
    # styled, not a bare or blank page: the theme's indigo header bar across the top, and text
    header = image.crop((0, 0, 1280, 40)).getcolors(1280 * 40)
    top_colour = max(header)[1]
    assert top_colour[2] > top_colour[0] + 40, f"header colour {top_colour}: theme CSS not applied"
    body_colours = image.crop((0, 100, 1280, 900)).getcolors(1280 * 800)
    assert len(body_colours) > 50, "the page body is blank"
