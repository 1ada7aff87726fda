"""Count the imports of our own packages made inside functions (not at a module's top), the
count issue 18 asks to keep under 10: each one left needs a comment saying why (an import-time
cost, or Django's app loading). Prints one JSON line; `--list` prints each place first.

    python3 bench/inner_imports.py [--list]
"""

from __future__ import annotations

import ast
import json
import sys
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("console", "bridge", "inference", "memory", "training")


class InnerImport(NamedTuple):
    path: Path  # relative to the repository's root
    line: int
    modules: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.path}:{self.line} {', '.join(self.modules)}"


def inner_imports() -> list[InnerImport]:
    """Every import of our packages inside a function (or method), once each, in file order.
    tests/test_architecture.py holds them to a count and asks each for a comment saying why."""
    found = set()
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if "migrations" in path.parts:
                continue
            tree = ast.parse(path.read_text())
            for function in ast.walk(tree):
                if not isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
                    continue
                for node in ast.walk(function):
                    if not isinstance(node, ast.Import | ast.ImportFrom):
                        continue
                    names = (
                        [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0
                        else [alias.name for alias in node.names] if isinstance(node, ast.Import)
                        else []
                    )  # fmt: skip
                    if any(name.split(".")[0] in PACKAGES for name in names):
                        found.add(InnerImport(path.relative_to(ROOT), node.lineno, tuple(names)))
    return sorted(found)


if __name__ == "__main__":
    places = inner_imports()
    if "--list" in sys.argv:
        print("\n".join(str(place) for place in places), file=sys.stderr)
    print(json.dumps({"bench": "inner_imports", "first_party_imports_inside_functions": len(places)}))
