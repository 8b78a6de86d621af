"""The projections (read models) and their versions: a registry naming each one."""

from __future__ import annotations

import msgspec

from app.projections import profile_changes, profiles


class Projection(msgspec.Struct, frozen=True):
    """A read model: its table, the version of the code that builds it, its set-based fill of an
    empty table and its application of a later stretch of the log to a filled one."""

    name: str
    version: int
    table: str
    fill_sql: str
    catch_up_sql: str


REGISTRY: dict[str, Projection] = {
    p.name: p
    for p in (
        Projection(profiles.NAME, profiles.VERSION, profiles.TABLE, profiles.FILL_SQL, profiles.CATCH_UP_SQL),
        Projection(
            profile_changes.NAME,
            profile_changes.VERSION,
            profile_changes.TABLE,
            profile_changes.FILL_SQL,
            profile_changes.CATCH_UP_SQL,
        ),
    )
}
