"""The migrations' head revision, which `/readyz` compares with the database's."""

from __future__ import annotations

from typing import Any

import pytest

from app import database


def test_the_head_revision_is_read_from_the_scripts_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """`/readyz` asks for it on every probe; reading the scripts runs every migration module."""
    made: list[str] = []
    real = database.ScriptDirectory

    def counting(directory: str) -> Any:
        made.append(directory)
        return real(directory)

    monkeypatch.setattr(database, "ScriptDirectory", counting)
    database.head_revision.cache_clear()
    first = database.head_revision()
    assert first is not None and database.head_revision() == first
    assert len(made) == 1
