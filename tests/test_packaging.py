"""The distribution installs the folders as the `tnn` namespace and nothing generic at top level."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SUBPACKAGES = [
    "tnn.cli",
    "tnn.model",
    "tnn.model.ssm",
    "tnn.convert",
    "tnn.training",
    "tnn.server",
    "tnn.server.routes",
    "tnn.clients",
]
PLAYGROUND = ["index.html", "playground.js", "sse.js", "playground.css"]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(ROOT)],
        check=True,
        timeout=300,
    )
    return next(out.glob("tnn_serve-*.whl"))


def test_wheel_holds_only_the_tnn_namespace(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert top_level == {"tnn"}
    assert "tnn/__init__.py" not in names  # implicit namespace package
    for package in SUBPACKAGES:
        assert package.replace(".", "/") + "/__init__.py" in names
    for name in PLAYGROUND:  # package data: the browser playground's static files
        assert f"tnn/server/playground/{name}" in names


def test_regular_install_imports_every_subpackage(wheel, tmp_path):
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
        check=True,
        timeout=300,
    )
    code = "import importlib, sys\n" + "".join(
        f"m = importlib.import_module('{p}'); assert m.__file__.startswith(sys.argv[1]), m.__file__\n"
        for p in SUBPACKAGES
    )
    code += (  # the playground serves its files from the installed package
        "from tnn.server.routes.playground import PAGE_DIR; assert str(PAGE_DIR).startswith(sys.argv[1]), PAGE_DIR\n"
        + "".join(f"assert (PAGE_DIR / '{name}').is_file()\n" for name in PLAYGROUND)
    )
    # -I would drop the venv's site-packages; instead put the target first so it shadows the editable install
    subprocess.run(
        [sys.executable, "-c", f"import sys; sys.path.insert(0, sys.argv[1]); {code}", str(target)],
        check=True,
        timeout=120,
        cwd=tmp_path,
    )
