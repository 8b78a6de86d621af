"""The projections' indexes lead with user_id instead of sdkappid.

Every read and every append looks the projections up by both (`sdkappid = … AND user_id = …`),
so either order finds the same rows in the same number of index pages. Building the indexes is
another matter. A B-tree build sorts its keys, and PostgreSQL's sort compares the first column by
an abbreviated key. With sdkappid first, that column is the same in nearly every row, so every
comparison falls through to a full comparison of user_id, then of tag. With user_id first, most
comparisons end at the abbreviated key. On the 1M-event bench log (2.5M changes),
profile_changes_pkey took 9.5 s to build before and 5.8 s after, and profile_changes_by_user_time
5.7 s and 4.2 s. A rebuild copies these definitions onto its shadow tables (app/rebuild.py), so
it builds the new ones. The profiles fill already sorts by user_id first for the same reason.

The new indexes are built CONCURRENTLY, outside the migration's transaction: appends project
inline into both tables, and an index built in the transaction would hold their locks for as long
as the builds take, failing the callbacks that arrive meanwhile. Then one short transaction swaps
them in under the old names. An interrupted run leaves at most an unused `…__rekeyed` index,
which the next run drops first.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-28
"""

from collections.abc import Sequence

from alembic import op

from app.sqlscript import execute_script

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# (index, table, whether it is the table's primary key, columns after the two leading ones)
INDEXES = (
    ("profiles_pkey", "profiles", True, "tag"),
    ("profile_changes_pkey", "profile_changes", True, "tag, event_time, position"),
    ("profile_changes_by_user_time", "profile_changes", False, "event_time DESC, position DESC"),
)


def rekey(first: str, second: str) -> None:
    """Rebuild the projections' indexes with `first`, `second` leading, without blocking writes."""
    with op.get_context().autocommit_block():
        for name, table, primary, rest in INDEXES:
            op.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {name}__rekeyed")
            op.execute(
                f"CREATE {'UNIQUE ' if primary else ''}INDEX CONCURRENTLY {name}__rekeyed"
                f" ON {table} ({first}, {second}, {rest})"
            )
    swap = [
        f"ALTER TABLE {table} DROP CONSTRAINT {name},"
        f" ADD CONSTRAINT {name} PRIMARY KEY USING INDEX {name}__rekeyed;"
        if primary
        else f"DROP INDEX {name}; ALTER INDEX {name}__rekeyed RENAME TO {name};"
        for name, table, primary, _rest in INDEXES
    ]
    execute_script("\n".join(swap))


def upgrade() -> None:
    rekey("user_id", "sdkappid")


def downgrade() -> None:
    rekey("sdkappid", "user_id")
