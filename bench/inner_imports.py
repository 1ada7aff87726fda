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

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("console", "bridge", "inference", "memory", "training")


def inner_imports() -> list[str]:
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
                        found.add(f"{path.relative_to(ROOT)}:{node.lineno} {', '.join(names)}")
    return sorted(found)


if __name__ == "__main__":
    places = inner_imports()
    if "--list" in sys.argv:
        print("\n".join(places), file=sys.stderr)
    print(json.dumps({"bench": "inner_imports", "first_party_imports_inside_functions": len(places)}))
