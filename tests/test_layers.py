"""Layers point one way: nothing in coupalign_core (or scripts/) imports coupalign_ros.

Scripts that measure the ROS adapter itself live in scripts/ros/, the one place above the adapter.

Walks every module's AST (imports inside functions and ``TYPE_CHECKING`` blocks included), so an
upward import hidden in a function body fails here too, not only at the top of a file.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in ``path``; relative imports are resolved."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.append((node.lineno, module))
    return found


def upward_imports(folder: str, forbidden: tuple[str, ...], above: tuple[str, ...] = ()) -> list[str]:
    """Imports of ``forbidden`` modules under ``folder``, except in its sub-folders ``above``."""
    bad = []
    for path in sorted((ROOT / folder).rglob("*.py")):
        if any(path.is_relative_to(ROOT / folder / sub) for sub in above):
            continue
        for line, module in imported_modules(path):
            if any(module == f or module.startswith(f + ".") for f in forbidden):
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    return bad


@pytest.mark.parametrize("folder, above", [("coupalign_core", ()), ("scripts", ("ros",))])
def test_core_never_imports_the_ros_adapter(folder, above):
    assert upward_imports(folder, ("coupalign_ros", "rclpy"), above=above) == []


def test_the_walker_sees_relative_and_nested_imports(tmp_path, monkeypatch):
    """The check itself can fail: a nested and a relative upward import are both reported."""
    pkg = tmp_path / "coupalign_core" / "sub"
    pkg.mkdir(parents=True)
    (pkg / "mod.py").write_text("def f():\n    from coupalign_ros.node import X\n")
    (pkg / "rel.py").write_text("from ..inference import segmenter\n")
    monkeypatch.setattr(__import__(__name__), "ROOT", tmp_path)
    assert upward_imports("coupalign_core", ("coupalign_ros",)) == [
        "coupalign_core/sub/mod.py:2 imports coupalign_ros.node"
    ]
    assert imported_modules(pkg / "rel.py") == [(1, "coupalign_core.inference")]
