"""Every package of the project is listed in pyproject.toml, so an install (and
the zipapp built from that list) carries it: a package left out works in a
checkout and fails only once installed."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TOP_LEVEL = ("agent", "bpfobj", "wire")


def test_every_package_is_listed_in_pyproject() -> None:
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(init.parent.relative_to(ROOT).parts)
             for top in TOP_LEVEL for init in (ROOT / top).rglob("__init__.py")}
    assert found == listed
