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

The upgrade rebuilds the three indexes in place and holds an exclusive lock on both projection
tables while it does: reads of profiles wait for about as long as a rebuild's index builds take.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-28
"""

from collections.abc import Sequence

from app.sqlscript import execute_script

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

KEYS = r"""
ALTER TABLE profiles DROP CONSTRAINT profiles_pkey,
    ADD CONSTRAINT profiles_pkey PRIMARY KEY ({first}, {second}, tag);
ALTER TABLE profile_changes DROP CONSTRAINT profile_changes_pkey,
    ADD CONSTRAINT profile_changes_pkey PRIMARY KEY ({first}, {second}, tag, event_time, position);
DROP INDEX profile_changes_by_user_time;
CREATE INDEX profile_changes_by_user_time
    ON profile_changes ({first}, {second}, event_time DESC, position DESC);
"""


def upgrade() -> None:
    execute_script(KEYS.format(first="user_id", second="sdkappid"))


def downgrade() -> None:
    execute_script(KEYS.format(first="sdkappid", second="user_id"))
