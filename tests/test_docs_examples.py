"""Every runnable code block of README.md and docs/*.md runs against a real `tnn serve` of the shipped model, so an
example cannot rot: ```bash / ```sh / ```shell blocks (curl, the tnn CLI) in bash with `set -eo pipefail`,
```python blocks in order in one namespace per page (a page's later blocks use what its earlier ones defined).
Addresses of the examples (127.0.0.1:8000, localhost:8000) are rewritten to the test server's; TNN_URL points the
clients there. A block that must not run here (it starts a long-running server, trains, builds images, names a
placeholder path) carries an explicit opt-out on the line before its fence:

    <!-- not-run: why -->

Blocks of other languages (text, json, yaml, ...) are never run. A shell block fails when it exits non-zero or an
answer it prints holds an error object.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import tnn.model
from tests.support import ServerProcess

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
SHELL = {"bash", "sh", "shell"}
PYTHON = {"python", "py"}
FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<lang>[\w+-]*)[^\n]*\n(?P<body>.*?)^(?P=indent)```[ \t]*$", re.M | re.S)
OPT_OUT = re.compile(r"<!--\s*not-run:\s*\S.*-->")
EXAMPLE_ADDRESS = re.compile(r"(?:http://)?(?:127\.0\.0\.1|localhost):8000")
ADMIN_KEY = "docs-admin"
BLOCK_TIMEOUT = 300


@dataclass(frozen=True)
class Block:
    page: Path
    line: int
    lang: str
    code: str
    opted_out: bool

    @property
    def name(self) -> str:
        return f"{self.page.relative_to(REPO)}:{self.line}"


def blocks(page: Path) -> list[Block]:
    """The fenced code blocks of a page, with their line and whether the line before the fence opts them out."""
    text = page.read_text()
    found = []
    for match in FENCE.finditer(text):
        line = text.count("\n", 0, match.start()) + 1
        before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        code = textwrap.dedent(match["body"])
        found.append(Block(page, line, match["lang"].lower(), code, bool(OPT_OUT.search(before))))
    return found


def runnable(page: Path) -> list[Block]:
    return [b for b in blocks(page) if b.lang in SHELL | PYTHON and not b.opted_out]


def test_blocks_are_found() -> None:
    """The collector sees the examples (a broken pattern would make the test below vacuous): the README's shell
    blocks, and Python and shell blocks across the pages, some opted out."""
    readme = blocks(REPO / "README.md")
    assert sum(b.lang in SHELL and not b.opted_out for b in readme) >= 1
    every = [b for page in PAGES for b in blocks(page)]
    assert sum(b.lang in PYTHON and not b.opted_out for b in every) >= 5
    assert sum(b.lang in SHELL and not b.opted_out for b in every) >= 5
    assert any(b.opted_out for b in every)


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    """The shipped model, as the examples expect it (model id `default_model`), with an admin key."""
    args = ["--max-num-seqs", "8", "--max-prefill-tokens", "512", "--admin-key", ADMIN_KEY]
    with ServerProcess(tnn.model.default_model_dir(), args=args) as process:
        yield process


def local(code: str, server: ServerProcess) -> str:
    return EXAMPLE_ADDRESS.sub(server.url, code)


def run_shell(block: Block, server: ServerProcess) -> None:
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "TNN_URL": server.url, "TNN_ADMIN_KEY": ADMIN_KEY, "TNN_THREADS": "1",
           "PATH": f"{bin_dir}:{os.environ.get('PATH', '')}"}  # fmt: skip
    done = subprocess.run(["bash", "-c", "set -eo pipefail\n" + local(block.code, server)], cwd=REPO, env=env,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=BLOCK_TIMEOUT)  # fmt: skip
    output = f"{block.name} ({block.lang}):\n{block.code}\n--- stdout\n{done.stdout[-3000:]}\n--- stderr\n{done.stderr[-3000:]}"
    assert done.returncode == 0, output
    assert '{"error":' not in done.stdout.replace(" ", ""), output


def run_python(block: Block, namespace: dict, server: ServerProcess) -> None:
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            exec(compile(local(block.code, server), block.name, "exec"), namespace)  # noqa: S102 (the docs' own code)
    except Exception as exc:
        raise AssertionError(f"{block.name} (python) raised {exc!r}:\n{block.code}\n--- printed\n"
                             f"{printed.getvalue()[-3000:]}") from exc  # fmt: skip


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_runnable_block_runs(page: Path, server: ServerProcess, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TNN_URL", server.url)
    monkeypatch.setenv("TNN_ADMIN_KEY", ADMIN_KEY)
    monkeypatch.chdir(REPO)
    namespace: dict = {"__name__": "__docs_example__"}
    for block in runnable(page):
        if block.lang in SHELL:
            run_shell(block, server)
        else:
            run_python(block, namespace, server)
