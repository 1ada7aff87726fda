"""The layers hold for every module: each first-party module sits in one layer of the
import-linter contract (pyproject.toml), so a new module cannot slip past the contract by
being in none; `make imports` (lint-imports) checks the imports themselves."""

from __future__ import annotations

import re
import tomllib

from bench.inner_imports import PACKAGES, ROOT, inner_imports

# Outside the layering: the project's composition root, and Django's migrations.
OUTSIDE = ("console.settings", "console.urls", "console.asgi", "console.celery", "console.apps")


def _layers() -> list[list[str]]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    (contract,) = [c for c in config["contracts"] if c["id"] == "layers"]
    return [[name.strip() for name in re.split(r"[:|]", layer)] for layer in contract["layers"]]


def _modules() -> list[str]:
    found = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            module = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
            if ".migrations" not in module and module not in PACKAGES:
                found.append(module)
    return found


def _within(module: str, layer_module: str) -> bool:
    return module == layer_module or module.startswith(layer_module + ".")


def test_every_module_sits_in_exactly_one_layer():
    layers = [name for layer in _layers() for name in layer]
    homeless, twice = [], []
    for module in _modules():
        if any(_within(module, outside) for outside in OUTSIDE):
            continue
        homes = [name for name in layers if _within(module, name)]
        if not homes:
            homeless.append(module)
        elif len(homes) > 1:
            twice.append((module, homes))

    assert homeless == [], "add these modules to a layer in pyproject.toml [tool.importlinter]"
    assert twice == []


def test_every_layer_names_a_module_that_exists():
    modules = set(_modules()) | set(PACKAGES)
    missing = [name for layer in _layers() for name in layer if name not in modules]
    assert missing == []


def test_imports_of_our_packages_inside_functions_are_few_and_each_says_why():
    # bench/inner_imports.py counts them; issue 18 brought them from 55 to 9.
    places = inner_imports()
    unexplained = []
    for place in places:
        lines = (ROOT / place.path).read_text().splitlines()
        if not any("#" in line for line in lines[max(0, place.line - 4) : place.line]):
            unexplained.append(str(place))

    assert unexplained == [], "say why each is imported inside a function, or import it at the top"
    assert len(places) < 10
