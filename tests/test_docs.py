"""The documentation a user reads: the site builds with every link and reference resolved, the README
stays a guide, and the repository speaks of the product alone (no work periods, experiment branches or
issue numbers in what users or maintainers read)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Text a user or maintainer reads: code, tests, docs, benchmarks, examples, the project's own files.
TEXT = [p for d in ("src", "tests", "docs", "bench", "examples") for p in (ROOT / d).rglob("*")
        if p.suffix in (".py", ".md", ".sh", ".yml", ".toml", ".txt") and "egg-info" not in str(p)]
TEXT += [ROOT / "README.md", ROOT / "pyproject.toml", ROOT / "mkdocs.yml", ROOT / ".ci" / "run"]
HISTORY = re.compile(r"\b(?:(?:first|second|third|fourth|fifth|sixth|seventh|eighth|ninth|tenth|eleventh|twelfth|"
                     r"\w+teenth|\w+tieth|twenty-\w+|thirty-\w+) session\b|issue \d+|issue #\d+|"
                     r"branch `|docs/results\.md)", re.IGNORECASE)


def test_the_repository_speaks_of_the_product_alone():
    found = [f"{p.relative_to(ROOT)}:{n}: {line.strip()[:80]}" for p in TEXT if p.is_file() and p != Path(__file__)
             for n, line in enumerate(p.read_text(errors="replace").splitlines(), 1) if HISTORY.search(line)]
    assert found == []


def test_the_readme_is_a_guide():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    order = [readme.index(h) for h in ("## Install", "## First run", "## Recipes", "## Test", "## Documentation")]
    assert order == sorted(order)
    for link in re.findall(r"\]\((docs/[^)#]+)", readme):
        assert (ROOT / link).is_file(), link


def test_the_docs_site_builds_with_every_link_resolved(tmp_path):
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings")
    r = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(tmp_path / "site")],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp_path / "site" / "python-api" / "index.html").read_text().count("vidpipe.engine.run") > 0
