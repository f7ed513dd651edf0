"""The reference docs agree with the code: configuration keys, defaults, choices; links."""

from __future__ import annotations

import re
from dataclasses import MISSING, fields
from enum import Enum
from pathlib import Path

import pytest
from conftest import REPO

from gradsweep.config import AppConfig

CONFIG_DOC = REPO / "docs" / "configuration.md"
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def _key_rows() -> dict[str, tuple[str, str]]:
    """Key -> (default as written, meaning) from the configuration keys table."""
    text = CONFIG_DOC.read_text()
    table = text[text.index("## Configuration keys") :]
    rows: dict[str, tuple[str, str]] = {}
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 3 or not cells[0].startswith("`"):
            continue
        keys = re.findall(r"`([a-z_]+)`", cells[0])
        defaults = [d.strip().strip("`") for d in cells[1].split(",")]
        assert len(defaults) == len(keys), f"row {cells[0]}: defaults {cells[1]!r}"
        for key, default in zip(keys, defaults):
            rows[key] = (default, cells[2])
    return rows


def _written(value: object) -> str:
    """A default as the docs write it."""
    if isinstance(value, Enum):
        return value.value
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def test_every_config_key_is_documented_with_its_default_and_choices() -> None:
    rows = _key_rows()
    schema = {f.name: f for f in fields(AppConfig)}
    assert sorted(rows) == sorted(schema), "docs/configuration.md keys differ from AppConfig"
    for name, field in schema.items():
        default = field.default if field.default is not MISSING else field.default_factory()
        written, meaning = rows[name]
        assert written == _written(default), f"{name}: docs say {written!r}, schema has {default!r}"
        if isinstance(default, Enum):
            missing = [m.value for m in type(default) if m.value not in meaning]
            assert not missing, f"{name}: choices {missing} not described in docs/configuration.md"


@pytest.mark.parametrize(
    "page", [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))], ids=lambda p: p.name
)
def test_relative_links_resolve(page: Path) -> None:
    broken = [
        target
        for target in LINK.findall(page.read_text())
        if "://" not in target and not (page.parent / target).exists()
    ]
    assert not broken, f"{page.name} links to missing files: {broken}"
