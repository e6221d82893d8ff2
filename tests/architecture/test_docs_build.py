"""The documentation stays buildable, linked and true to the code.

* ``mkdocs build --strict`` of ``mkdocs.yml`` + ``docs/`` succeeds with no warning: a link to a
  missing page or a missing anchor fails it (``validation`` in ``mkdocs.yml``), and a planted
  broken link is shown to fail it;
* the README stays a newcomer's page: at most ``README_MAX_LINES`` lines, and every relative
  link or image in it points to a file that exists (and, into a docs page, to an anchor the
  built site has);
* every setting declared in ``armlab/settings.py`` has a row on the configuration page.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from armlab.settings import KafkaSettings, Settings

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"
README_MAX_LINES = 320

# [text](target) and ![alt](target); the target ends at whitespace or the closing parenthesis.
_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_FENCE = re.compile(r"^\s*(```|~~~)")


def _mkdocs_build(config: Path, site: Path) -> subprocess.CompletedProcess[str]:
    # No -q: MkDocs counts warnings for --strict only when they are logged.
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--clean",
         "-f", str(config), "-d", str(site)],
        cwd=config.parent, capture_output=True, text=True, timeout=300,
    )


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("docs") / "site"
    res = _mkdocs_build(REPO / "mkdocs.yml", out)
    log = res.stdout + res.stderr
    assert res.returncode == 0, log[-5000:]
    assert "WARNING" not in log, log[-5000:]
    return out


def test_the_docs_build_strictly_without_warnings(site: Path) -> None:
    assert (site / "index.html").is_file()
    for page in DOCS.glob("*.md"):
        assert _html_of(site, page.name).is_file(), f"{page.name} was not built"


def test_a_broken_link_fails_the_build(tmp_path: Path) -> None:
    """The strict build really refuses a link to a missing page and to a missing anchor."""
    shutil.copy(REPO / "mkdocs.yml", tmp_path / "mkdocs.yml")
    shutil.copytree(DOCS, tmp_path / "docs")
    with (tmp_path / "docs" / "index.md").open("a", encoding="utf-8") as fh:
        fh.write("\n[gone](no-such-page.md) and [nowhere](api.md#no-such-anchor)\n")
    res = _mkdocs_build(tmp_path / "mkdocs.yml", tmp_path / "site")
    log = res.stdout + res.stderr
    assert res.returncode != 0, log[-3000:]
    assert "no-such-page.md" in log and "no-such-anchor" in log, log[-3000:]


def _html_of(site: Path, page: str) -> Path:
    """Where MkDocs (use_directory_urls) writes ``docs/<page>``."""
    stem = page.removesuffix(".md")
    return site / "index.html" if stem == "index" else site / stem / "index.html"


def _links(markdown: str) -> list[str]:
    """Link and image targets of ``markdown``, outside fenced code blocks and code spans."""
    targets, fenced = [], False
    for line in markdown.splitlines():
        if _FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            targets += _LINK.findall(re.sub(r"`[^`]*`", "", line))
    return targets


def _github_slug(heading: str) -> str:
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def broken_links(readme: str, root: Path, site: Path) -> list[str]:
    """Relative links of a README that name a missing file or a missing anchor."""
    headings = {_github_slug(h) for h in re.findall(r"^#+ (.+)$", readme, re.MULTILINE)}
    broken = []
    for target in _links(readme):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        if not path:
            if anchor not in headings:
                broken.append(f"{target}: no such heading in the README")
            continue
        file = (root / path).resolve()
        if not file.exists():
            broken.append(f"{target}: {path} does not exist")
            continue
        if anchor and file.suffix == ".md" and file.parent == DOCS.resolve():
            html = _html_of(site, file.name).read_text(encoding="utf-8")
            if f'id="{anchor}"' not in html:
                broken.append(f"{target}: {file.name} has no anchor #{anchor}")
    return broken


def test_readme_is_a_short_page() -> None:
    lines = (REPO / "README.md").read_text(encoding="utf-8").count("\n")
    assert lines <= README_MAX_LINES, (
        f"README.md has {lines} lines (at most {README_MAX_LINES}): move reference material "
        "into docs/ and history into docs/changelog.md")


def test_readme_links_point_to_existing_files(site: Path) -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert _links(readme), "no links found: the link pattern is broken"
    assert broken_links(readme, REPO, site) == []


def test_the_readme_link_check_catches_a_broken_link(site: Path) -> None:
    planted = ("# Title\n\n[a](docs/missing.md) [b](docs/api.md#no-such-anchor) "
               "[c](#no-such-heading) ![d](docs/nothing.png) [ok](docs/api.md#endpoints) "
               "[ok too](#title) [web](https://example.org/x)\n")
    assert [b.split(":")[0] for b in broken_links(planted, REPO, site)] == [
        "docs/missing.md", "docs/api.md#no-such-anchor", "#no-such-heading", "docs/nothing.png"]


def _env_names(model: type, prefix: str) -> set[str]:
    return {f"{prefix}{name.upper()}" for name in model.model_fields if name != "kafka"}


def test_every_setting_is_documented() -> None:
    page = (DOCS / "configuration.md").read_text(encoding="utf-8")
    names = _env_names(Settings, "ARMLAB_") | _env_names(KafkaSettings, "ARMLAB_KAFKA_")
    missing = sorted(n for n in names if f"`{n}`" not in page)
    assert missing == [], f"settings without a row in docs/configuration.md: {missing}"
    documented = set(re.findall(r"`(ARMLAB_[A-Z0-9_]+)`", page))
    assert documented - names == set(), "docs/configuration.md names settings that do not exist"
