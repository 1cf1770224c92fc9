"""Every relative link in README.md, SECURITY.md and docs/ resolves to a file in the repo (and
to a heading, when it names one): a user who clones the repo finds every page it points to."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", ROOT / "SECURITY.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    found = set()
    for line in page.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            found.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return found


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page: Path) -> None:
    broken = []
    for target in LINK.findall(page.read_text(encoding="utf-8")):
        if re.match(r"^[a-z]+:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        destination = (page.parent / path).resolve() if path else page
        outside = ROOT not in destination.parents and destination != ROOT
        missing_anchor = bool(anchor) and destination.suffix == ".md"
        if (
            not destination.exists()
            or outside
            or (missing_anchor and anchor not in anchors(destination))
        ):
            broken.append(target)
    assert not broken, f"{page.name}: links that do not resolve: {broken}"


def test_the_docs_exist_and_the_readme_points_to_them() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for page in ("docs/protocol.md", "docs/operations.md", "SECURITY.md"):
        assert (ROOT / page).is_file()
        assert f"]({page}" in readme, page
