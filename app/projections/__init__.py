"""The projections (read models) and their versions: a registry naming each one."""

from __future__ import annotations

import msgspec

from app.projections import profile_changes, profiles


class Projection(msgspec.Struct, frozen=True):
    """A read model: its table, the version of the code that builds it, and its set-based fill."""

    name: str
    version: int
    table: str
    fill_sql: str


REGISTRY: dict[str, Projection] = {
    p.name: p
    for p in (
        Projection(profiles.NAME, profiles.VERSION, profiles.TABLE, profiles.FILL_SQL),
        Projection(
            profile_changes.NAME,
            profile_changes.VERSION,
            profile_changes.TABLE,
            profile_changes.FILL_SQL,
        ),
    )
}
