"""The wheel must contain every package and its data: pyproject lists them explicitly."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _config() -> dict[str, object]:
    with (ROOT / "pyproject.toml").open("rb") as f:
        tool = tomllib.load(f)["tool"]["setuptools"]
    assert isinstance(tool, dict)
    return tool


def _package_dir(name: str, mapping: dict[str, str]) -> Path:
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        head = ".".join(parts[:cut])
        if head in mapping:
            return ROOT / mapping[head] / Path(*parts[cut:])
    raise AssertionError(f"{name} is under no package-dir mapping")


def test_every_python_package_is_listed_for_the_wheel() -> None:
    tool = _config()
    mapping = tool["package-dir"]
    listed = tool["packages"]
    assert isinstance(mapping, dict)
    assert isinstance(listed, list)
    found = set()
    for source_root in {Path(path).parts[0] for path in mapping.values()}:
        for init in (ROOT / source_root).rglob("__init__.py"):
            relative = init.parent.relative_to(ROOT / source_root)
            found.add(".".join(relative.parts))
    assert found <= set(listed), f"add to [tool.setuptools] packages: {sorted(found - set(listed))}"
    for name in listed:
        assert _package_dir(name, mapping).is_dir(), name
