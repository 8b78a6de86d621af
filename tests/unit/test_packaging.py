"""A non-editable install ships every subpackage and the migrations."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_app_package_is_listed_for_setuptools() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    found = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for init in (ROOT / "app").rglob("__init__.py")
        if "__pycache__" not in init.parts
    }
    assert found <= listed, f"missing from [tool.setuptools] packages: {sorted(found - listed)}"
    assert config["package-dir"]["app._migrations"] == "migrations"
    assert {"app._migrations", "app._migrations.versions"} <= listed
    assert (ROOT / "migrations" / "__init__.py").is_file()
    assert (ROOT / "migrations" / "versions" / "__init__.py").is_file()
