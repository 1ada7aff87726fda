"""The README's configuration table lists every environment variable the settings read."""

from __future__ import annotations

import re

from console.localstack import PROJECT_DIR


def test_every_environment_variable_is_documented():
    sources = "".join(path.read_text() for path in (PROJECT_DIR / "console" / "settings").glob("*.py"))
    read = set(re.findall(r'env\.\w+\(\s*"([A-Z_]+)"', sources))
    readme = (PROJECT_DIR / "README.md").read_text()
    documented = set(re.findall(r"^\| `([A-Z_]+)` \|", readme, flags=re.MULTILINE))

    assert read, "no env reads found: the pattern is out of date"
    assert read <= documented, f"undocumented: {sorted(read - documented)}"


def test_quick_start_is_exactly_make_run_and_make_test():
    readme = (PROJECT_DIR / "README.md").read_text()
    quick_start = readme.split("## Quick start", 1)[1].split("##", 1)[0]
    block = quick_start.split("```sh", 1)[1].split("```", 1)[0]

    commands = [line.split("#")[0].strip() for line in block.strip().splitlines()]

    assert commands == ["make run", "make test"]
