"""The import graph is the one docs/ARCHITECTURE.md draws (issue 16).

- Each package imports only what the "may import" table of docs/ARCHITECTURE.md allows: stages
  (train, infer, bench, demo) import the library ``medq`` and never each other; ``medq`` imports
  no stage.
- No module imports another module's ``_private`` name (from this repository's code).
- Every module of ``medq/`` is in ARCHITECTURE.md's library table.
- The one argument parser in ``medq/`` is ``medq/cli.py``, as ARCHITECTURE.md says.

Imports are read with ``ast`` (nothing is executed), including imports inside functions.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("medq", "train", "infer", "bench", "demo")
ARCHITECTURE = REPO / "docs" / "ARCHITECTURE.md"


def _python_files(*roots: str) -> list[Path]:
    return sorted(
        p for r in roots for p in (REPO / r).rglob("*.py") if "__pycache__" not in p.parts
    )


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> list[tuple[int, str, list[str]]]:
    """(line, absolute module, imported names) of every import in ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    package = _module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            out.append((node.lineno, module, [a.name for a in node.names]))
    return out


def allowed_imports() -> dict[str, set[str]]:
    """ARCHITECTURE.md's table ``| package | may import |``: {package: packages it may import}."""
    text = ARCHITECTURE.read_text(encoding="utf-8")
    table = re.search(r"\| package \| may import \|\n\|[-| ]+\|\n((?:\|.*\|\n)+)", text)
    assert table, "docs/ARCHITECTURE.md has no '| package | may import |' table"
    allowed = {}
    for line in table.group(1).splitlines():
        cells = [c.strip().strip("`/") for c in line.strip("|").split("|")]
        allowed[cells[0]] = set(re.findall(r"`(\w+)/?`", line.split("|")[2]))
    return allowed


def test_the_architecture_table_names_every_package():
    assert set(allowed_imports()) == set(PACKAGES)


@pytest.mark.parametrize("package", PACKAGES)
def test_each_package_imports_only_what_architecture_md_allows(package):
    allowed = allowed_imports()[package] | {package}
    bad = []
    for path in _python_files(package):
        for line, module, _ in _imports(path):
            top = module.split(".")[0]
            if top in PACKAGES and top not in allowed:
                bad.append(f"{path.relative_to(REPO)}:{line} imports {module}")
    assert not bad, f"{package}/ may import only {sorted(allowed)}:\n" + "\n".join(bad)


def test_no_module_imports_another_modules_private_name():
    ours = {_module_name(p) for p in _python_files(*PACKAGES, "tests")}
    ours |= {m.split(".", 1)[1] for m in ours if m.startswith("tests.")}  # tests import by name
    bad = []
    for path in _python_files(*PACKAGES, "tests"):
        for line, module, names in _imports(path):
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            if module.split(".")[-1].startswith("_") and not module.split(".")[-1].startswith("__"):
                private.append(module)
            if private and (module in ours or module.split(".")[0] in PACKAGES):
                bad.append(f"{path.relative_to(REPO)}:{line} from {module} import "
                           f"{', '.join(private)}")
    assert not bad, "private names used outside their module:\n" + "\n".join(bad)


def test_every_library_module_is_in_the_architecture_table():
    text = ARCHITECTURE.read_text(encoding="utf-8")
    missing = []
    for path in sorted((REPO / "medq").iterdir()):
        if path.name.startswith(("_", ".")) or not (path.suffix == ".py" or path.is_dir()):
            continue
        if path.is_dir() and not (path / "__init__.py").is_file():
            continue
        name = f"`medq/{path.stem}.py`" if path.suffix == ".py" else f"`medq/{path.name}/`"
        if f"| {name} |" not in text:
            missing.append(name)
    assert not missing, f"docs/ARCHITECTURE.md's library table lacks {', '.join(missing)}"


def test_no_test_module_imports_another_test_module():
    """Shared test helpers live in tests/fakes/ or conftest.py (fixtures), never in a test module:
    importing one test module from another runs its tests' imports twice, hides where a helper
    lives and makes a test module impossible to delete or split alone (issue 29)."""
    tests = REPO / "tests"
    test_modules = {p.stem for p in tests.glob("test_*.py")} | {"conftest"}
    bad = []
    for path in _python_files("tests"):
        for line, module, _ in _imports(path):
            name = module.removeprefix("tests.")
            if name.split(".")[0] in test_modules:
                bad.append(f"{path.relative_to(REPO)}:{line} imports {module}")
    assert not bad, "test modules imported by other test code:\n" + "\n".join(bad)


def test_the_only_argument_parser_in_the_library_is_medq_cli():
    """docs/ARCHITECTURE.md: the stages own their options; the one argparse in ``medq/`` is the
    subcommand dispatcher (``medq/cli.py``)."""
    users = [f"{path.relative_to(REPO)}:{line}" for path in _python_files("medq")
             for line, module, _ in _imports(path)
             if module == "argparse" and path != REPO / "medq" / "cli.py"]
    assert not users, "argparse imported in medq/ outside medq/cli.py:\n" + "\n".join(users)
    assert "The only argument parsing in `medq/` is `medq/cli.py`" in \
        ARCHITECTURE.read_text(encoding="utf-8")
