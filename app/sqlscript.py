"""Run a multi-statement SQL script inside the current Alembic migration's transaction."""

from __future__ import annotations

from typing import Any

from alembic import op


def execute_script(script: str) -> None:
    """Send `script` as one simple-protocol query (asyncpg prepares single statements only)."""
    op.execute("SELECT 1")  # makes the driver adapter open the migration's transaction first
    dbapi_connection: Any = op.get_bind().connection.dbapi_connection
    dbapi_connection.run_async(lambda connection: connection.execute(script))
