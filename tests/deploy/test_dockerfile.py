"""The Dockerfile passes hadolint, and its build context carries every package the wheel needs."""

from __future__ import annotations

import subprocess
import tomllib

import pytest

from .conftest import REPO, require_tool

pytestmark = pytest.mark.deploy


def test_hadolint_passes() -> None:
    hadolint = require_tool("hadolint")
    result = subprocess.run([hadolint, "Dockerfile"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerignore_admits_every_package_folder() -> None:
    """.dockerignore is an allow-list, so a package folder added to pyproject.toml must be added there too."""
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    folders = {path.split("/")[0] for path in pyproject["tool"]["setuptools"]["package-dir"].values()}
    admitted = {line[1:].rstrip("/") for line in (REPO / ".dockerignore").read_text().splitlines() if line[:1] == "!"}
    assert folders | {"pyproject.toml", "README.md", "deploy/wheels"} <= admitted
