"""The code's shape: one error root, no private imports across subpackages, files that read in
one sitting, and a core that imports without the app's dependencies."""

from __future__ import annotations

import ast
import inspect
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO_ROOT

import lenskit
from lenskit import errors

PACKAGE = REPO_ROOT / "lenskit"
SOURCES = sorted(PACKAGE.rglob("*.py"))
MAX_FILE_LINES = 600
MAX_FUNCTION_LINES = 80


def _subpackage(module: str) -> str:
    """``lenskit.ui.pages.lens`` -> ``lenskit.ui``; ``lenskit.results`` -> itself."""
    parts = module.split(".")
    if len(parts) >= 2 and (PACKAGE / parts[1]).is_dir():
        return ".".join(parts[:2])
    return module


def _module_name(path: Path) -> str:
    rel = path.relative_to(REPO_ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def test_every_public_exception_derives_from_the_root():
    for name in lenskit.__all__:
        obj = getattr(lenskit, name)
        if inspect.isclass(obj) and issubclass(obj, BaseException):
            assert issubclass(obj, errors.LenskitError), name
    for name in errors.__all__:
        assert issubclass(getattr(errors, name), errors.LenskitError), name


def test_user_errors_are_value_errors():
    user = [
        errors.InputError,
        errors.PromptError,
        errors.TargetError,
        errors.InterventionError,
        errors.LayerSelectionError,
        errors.PositionSelectionError,
        errors.UnknownInterventionError,
        errors.GenerationLengthError,
    ]
    for cls in user:
        assert issubclass(cls, errors.InputError) and issubclass(cls, ValueError), cls
    for cls in (errors.ModelLoadError, errors.ReadoutError):
        assert issubclass(cls, RuntimeError) and not issubclass(cls, errors.InputError)


def test_public_names_import_from_lenskit():
    for name in lenskit.__all__:
        assert getattr(lenskit, name) is not None, name


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_no_private_imports_across_subpackages(path):
    own = _subpackage(_module_name(path))
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("lenskit"):
            for alias in node.names:
                if alias.name.startswith("_") and alias.name != "_C":
                    assert _subpackage(node.module) == own, (
                        f"{path}: imports {node.module}.{alias.name} from outside {own}"
                    )


@pytest.mark.parametrize(
    "path", [*SOURCES, REPO_ROOT / "app.py"], ids=lambda p: str(p.relative_to(REPO_ROOT))
)
def test_files_and_functions_read_in_one_sitting(path):
    if not path.is_file():
        pytest.skip("no such file")
    text = path.read_text()
    limit = 150 if path.name == "app.py" and path.parent == REPO_ROOT else MAX_FILE_LINES
    assert len(text.splitlines()) <= limit, f"{path} has {len(text.splitlines())} lines"
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                body = body[1:]  # the docstring does not count
            if body:
                n = body[-1].end_lineno - body[0].lineno + 1
                assert n <= MAX_FUNCTION_LINES, f"{path}:{node.name} has {n} lines of code"


def test_importing_lenskit_needs_no_app_dependencies():
    code = (
        "import sys, lenskit, lenskit.cli\n"
        "bad = [m for m in ('streamlit', 'altair', 'vl_convert') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT
    )
    assert proc.returncode == 0, proc.stderr


def test_code_refers_to_the_repository_design_document():
    assert (REPO_ROOT / "docs" / "architecture.md").is_file()
    for path in SOURCES:
        assert "DESIGN.md" not in path.read_text(), f"{path} refers to DESIGN.md"
