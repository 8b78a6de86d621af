"""Cheaper keys: user ids and tags compare bytewise; profile_changes has one index fewer.

User ids and tags are identifiers, never sorted for people: with the "C" collation every B-tree
insert, lookup and rebuild sort compares bytes instead of calling the locale (equality is the same,
the collations are deterministic). profile_changes' old key (position, tag) and its index by
(sdkappid, user_id, tag, event_time, position) held the same rows in two orders; a position
determines its app, user and EventTime, so the wider key is just as unique. 0002's
project_events stays right under either key (it matches followers by (position, tag)); 0004
rewrites it for the new one.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27
"""

from collections.abc import Sequence

from app.sqlscript import execute_script

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UPGRADE = r"""
ALTER TABLE events ALTER COLUMN user_id TYPE text COLLATE "C";
ALTER TABLE profiles ALTER COLUMN user_id TYPE text COLLATE "C",
                     ALTER COLUMN tag TYPE text COLLATE "C";
ALTER TABLE profile_changes ALTER COLUMN user_id TYPE text COLLATE "C",
                            ALTER COLUMN tag TYPE text COLLATE "C";
ALTER TABLE profile_changes DROP CONSTRAINT profile_changes_pkey;
DROP INDEX profile_changes_by_tag_time;
ALTER TABLE profile_changes
    ADD CONSTRAINT profile_changes_pkey PRIMARY KEY (sdkappid, user_id, tag, event_time, position);
"""

DOWNGRADE = r"""
ALTER TABLE profile_changes DROP CONSTRAINT profile_changes_pkey;
ALTER TABLE profile_changes ADD CONSTRAINT profile_changes_pkey PRIMARY KEY (position, tag);
CREATE INDEX profile_changes_by_tag_time
    ON profile_changes (sdkappid, user_id, tag, event_time, position);
ALTER TABLE events ALTER COLUMN user_id TYPE text COLLATE "default";
ALTER TABLE profiles ALTER COLUMN user_id TYPE text COLLATE "default",
                     ALTER COLUMN tag TYPE text COLLATE "default";
ALTER TABLE profile_changes ALTER COLUMN user_id TYPE text COLLATE "default",
                            ALTER COLUMN tag TYPE text COLLATE "default";
"""


def upgrade() -> None:
    execute_script(UPGRADE)


def downgrade() -> None:
    execute_script(DOWNGRADE)
