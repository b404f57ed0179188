"""The documentation site builds in strict mode: a broken link, a missing anchor or a bad nav entry fails."""

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def build(config: Path, site: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(config), "--site-dir", str(site)],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_docs_site_builds_strict(tmp_path: Path) -> None:
    result = build(ROOT / "mkdocs.yml", tmp_path / "site")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "site" / "serving" / "index.html").is_file()


def test_strict_build_fails_on_a_broken_link(tmp_path: Path) -> None:
    """The check itself can fail: a copy of the docs with one link to a page that does not exist."""
    shutil.copytree(ROOT / "docs", tmp_path / "docs")
    config = tmp_path / "mkdocs.yml"
    config.write_text((ROOT / "mkdocs.yml").read_text())
    page = tmp_path / "docs" / "serving.md"
    page.write_text(page.read_text() + "\nSee [nowhere](no-such-page.md).\n")
    result = build(config, tmp_path / "site")
    assert result.returncode != 0
    assert "no-such-page.md" in result.stderr


def test_a_page_outside_nav_does_not_break_the_build(tmp_path: Path) -> None:
    """Helpers add pages (docs/<topic>.md) before the nav lists them: strict mode reports them at INFO only."""
    shutil.copytree(ROOT / "docs", tmp_path / "docs")
    config = tmp_path / "mkdocs.yml"
    config.write_text((ROOT / "mkdocs.yml").read_text())
    (tmp_path / "docs" / "new-topic.md").write_text("# New topic\n\nSee [serving](serving.md).\n")
    result = build(config, tmp_path / "site")
    assert result.returncode == 0, result.stderr
