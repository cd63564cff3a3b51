"""The house plan, checked: only config.py reads the environment, and modules and functions
stay within a readable size unless a reason is written next to them. (The import layering
is checked by import-linter in `make lint`: pyproject.toml [tool.importlinter].)"""

from __future__ import annotations

import ast
from pathlib import Path

SERVICE = Path(__file__).resolve().parents[1] / "service"
MAX_MODULE_LINES = 300
MAX_FUNCTION_LINES = 40
REASON = "# Long:"  # on the line before a long def, or in a long module's first 30 lines


def modules() -> list[Path]:
    return sorted(p for p in SERVICE.rglob("*.py") if "migrations" not in p.parts)


def environment_reads(tree: ast.AST) -> list[int]:
    """Lines that touch os.environ, os.getenv or os.putenv, or import them from os."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) \
                and node.value.id == "os" and node.attr in ("environ", "getenv", "putenv",
                                                            "environb", "getenvb"):
            found.append(node.lineno)
        if isinstance(node, ast.ImportFrom) and node.module == "os" \
                and any(a.name in ("environ", "getenv", "putenv") for a in node.names):
            found.append(node.lineno)
    return found


def test_only_config_reads_the_environment() -> None:
    readers = {str(p.relative_to(SERVICE)): lines for p in modules()
               if (lines := environment_reads(ast.parse(p.read_text())))}
    assert set(readers) == {"config.py"}, readers


def test_the_checker_finds_environment_reads() -> None:
    tree = ast.parse("import os\nfrom os import getenv\na = os.environ['X']\nb = os.getenv('Y')\n")
    assert sorted(environment_reads(tree)) == [2, 3, 4]


def test_modules_and_functions_stay_readable() -> None:
    too_long = []
    for path in modules():
        lines = path.read_text().splitlines()
        name = str(path.relative_to(SERVICE))
        if len(lines) > MAX_MODULE_LINES and not any(REASON in line for line in lines[:30]):
            too_long.append(f"{name}: {len(lines)} lines")
        for node in ast.walk(ast.parse("\n".join(lines))):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            length = (node.end_lineno or node.lineno) - node.lineno + 1
            reason = any(REASON in lines[i - 1] for i in (first - 1, node.lineno) if i >= 1)
            if length > MAX_FUNCTION_LINES and not reason:
                too_long.append(f"{name}:{node.lineno} {node.name}: {length} lines")
    assert not too_long, "\n".join(too_long)
