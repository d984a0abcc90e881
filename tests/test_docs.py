"""The README and docs/ link only to files of the repository; the API reference builds."""

import importlib
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def test_relative_links_resolve():
    pages = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    broken = []
    for page in pages:
        for target in LINK.findall(page.read_text()):
            if "://" in target:
                continue
            if not (page.parent / target).resolve().exists():
                broken.append(f"{page.relative_to(REPO)} -> {target}")
    assert not broken, broken
    assert len(pages) > 1


def test_readme_names_nothing_outside_the_repository():
    text = (REPO / "README.md").read_text() + "".join(
        p.read_text() for p in (REPO / "docs").glob("*.md")
    )
    assert "../shared" not in text and "/tmp/" not in text


def test_api_reference_builds_with_every_public_name(tmp_path):
    """`make docs` runs the same command; a module that cannot import, or a warning, fails it."""
    done = subprocess.run(
        [sys.executable, "-m", "pdoc", "-o", str(tmp_path), "privlearn"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0 and not done.stderr.strip(), done.stderr[-2000:]
    checked, missing = 0, []
    for package in ("he", "linalg", "approx", "transfer", "fl"):
        page = (tmp_path / "privlearn" / f"{package}.html").read_text()
        for name in getattr(importlib.import_module(f"privlearn.{package}"), "__all__", []):
            checked += 1
            if f'id="{name}"' not in page:
                missing.append(f"privlearn.{package}.{name}")
    assert checked > 10 and not missing, missing
