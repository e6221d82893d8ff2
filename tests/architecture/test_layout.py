"""The layout is the architecture: these checks fail when the code stops matching it.

* the import contracts of ``pyproject.toml`` hold (``lint-imports``), and they do catch an
  upward import and an import cycle when one is planted in a copy of the package;
* imports sit at the top of modules: a function-level import is allowed only for a heavy
  optional library (torch and friends, MABWiser, Vowpal Wabbit, matplotlib, uvicorn,
  confluent-kafka) or in a command of the CLI (which imports per command so ``armlab --help``
  stays fast);
* docstrings and comments are self-contained: no references to documents outside the
  repository or to the notes it was built from;
* the package table of the architecture page (``docs/architecture.md``) lists exactly the
  packages and top-level modules on disk.
"""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PKG = REPO / "armlab"
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"

HEAVY = {"torch", "transformers", "safetensors", "tokenizers", "gguf", "mabwiser",
         "vowpalwabbit", "matplotlib", "uvicorn", "uvloop", "confluent_kafka"}


def _lint_imports(cwd: Path, pythonpath: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=cwd, capture_output=True,
                          text=True, timeout=120, env={"PYTHONPATH": str(pythonpath),
                                                       "PATH": "/usr/bin:/bin"})


def test_import_contracts_hold() -> None:
    res = _lint_imports(REPO, REPO)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    assert "0 broken" in res.stdout


@pytest.mark.parametrize(
    ("module", "planted", "broken"),
    [
        # the core reaching up into a service
        ("core/evidence.py", "from armlab.services import results  # noqa", "Layers"),
        # the core importing the database library
        ("core/decisions.py", "import sqlalchemy  # noqa", "The core is pure"),
        # two services importing each other
        ("services/decisions.py", "from armlab.services import registry  # noqa", "cycles"),
        # a service reaching for the database library instead of its port
        ("services/ingest.py", "from sqlalchemy.exc import DataError  # noqa",
         "Services reach storage through ports"),
        ("services/dashboard.py", "from sqlalchemy import select  # noqa",
         "Services reach storage through ports"),
        # the scoring adapter importing the Kafka adapter
        ("adapters/scoring/checkpoints.py", "from armlab.adapters.kafka import memory  # noqa",
         "Each adapter stands alone"),
    ],
)
def test_contracts_catch_a_planted_violation(
    tmp_path: Path, module: str, planted: str, broken: str
) -> None:
    copy = tmp_path / "repo"
    shutil.copytree(PKG, copy / "armlab", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", copy / "pyproject.toml")
    with (copy / "armlab" / module).open("a") as fh:
        fh.write(f"\n{planted}\n")
    res = _lint_imports(copy, copy)
    assert res.returncode != 0, res.stdout[-2000:]
    assert "Broken contracts" in res.stdout, res.stdout[-2000:]
    assert broken in res.stdout.split("Broken contracts", 1)[1], res.stdout[-3000:]


def _function_level_imports() -> list[str]:
    found = []
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(REPO).as_posix()
        if rel.startswith("armlab/entrypoints/cli/"):
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for fn in ast.walk(tree):
            if not isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for node in ast.walk(fn):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom):
                    names = [node.module or ""]
                else:
                    continue
                found += [f"{rel}:{node.lineno} imports {n}" for n in names
                          if n.split(".")[0] not in HEAVY]
    return found


def test_imports_sit_at_module_top() -> None:
    assert _function_level_imports() == []


_OUTSIDE = re.compile(
    r"DESIGN\.md|STYLE\.md|RECIPE\.md|shared/kafka|\bissue \d|area not built|common brief|"
    r"\bthe brief\b|\b(stats|scoring|allocation|registry) area\b",
    re.IGNORECASE,
)


def test_docstrings_reference_nothing_outside_the_repository() -> None:
    hits = []
    for path in sorted(PKG.rglob("*.py")):
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if _OUTSIDE.search(line):
                hits.append(f"{path.relative_to(REPO)}:{n}: {line.strip()}")
    assert hits == []


def _package_table_rows() -> set[str]:
    text = (REPO / "docs" / "architecture.md").read_text(encoding="utf-8")
    start = text.index("<!-- package-table -->")
    end = text.index("<!-- /package-table -->")
    rows = set()
    for line in text[start:end].splitlines():
        m = re.match(r"\|\s*`(armlab/[^`]*)`", line)
        if m:
            rows.add(m.group(1).rstrip("/"))
    return rows


def test_package_table_matches_the_tree() -> None:
    """Every package and top-level module has a row; every row names something that exists."""
    packages = {p.parent.relative_to(REPO).as_posix() for p in PKG.rglob("__init__.py")}
    packages.discard("armlab")
    packages |= {p.relative_to(REPO).as_posix() for p in PKG.glob("*.py")
                 if p.name not in ("__init__.py", "__main__.py")}
    rows = _package_table_rows()
    assert packages - rows == set(), "packages missing from docs/architecture.md's table"
    assert {r for r in rows if not (REPO / r).exists()} == set(), "rows naming nothing"
