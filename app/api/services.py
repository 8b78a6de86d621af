"""What the HTTP handlers share: settings, the read pool, the group committer; kept on app.state."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import asyncpg
from litestar.datastructures import State

from app.config import Settings
from app.database import pooled_connection
from app.eventstore import EventStore
from app.feed import Feed
from app.groupcommit import GroupCommitter
from app.queries import stale_projections


@dataclass(slots=True)
class Services:
    """The process's long-lived collaborators."""

    settings: Settings
    pool: asyncpg.Pool[Any]
    committer: GroupCommitter
    store: EventStore
    feed: Feed

    async def projection_problems(self) -> list[str]:
        """Projections whose tables were built by another version than the code's."""
        async with pooled_connection(self.pool) as connection:
            return await stale_projections(connection)

    async def keep_rejected(self, *, sdkappid: int, query: dict[str, str], body: bytes, reason: str) -> int:
        """Store a delivery that was refused as invalid, with the reason."""
        async with pooled_connection(self.pool) as connection:
            return await self.store.insert_rejected(
                connection, sdkappid=sdkappid, query=query, body=body, reason=reason
            )


def services(state: State) -> Services:
    """The Services stored on the application state."""
    found: Services = state["services"]
    return found
