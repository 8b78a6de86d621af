"""Cheaper keys: user ids and tags compare bytewise; profile_changes has one index fewer.

User ids and tags are identifiers, never sorted for people: with the "C" collation every B-tree
insert, lookup and rebuild sort compares bytes instead of calling the locale (equality is the same,
the collations are deterministic). profile_changes' old key (position, tag) and its index by
(sdkappid, user_id, tag, event_time, position) held the same rows in two orders; a position
determines its app, user and EventTime, so the wider key is just as unique.

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

PROJECT_EVENTS = r"""
-- Applies a range of just-appended events to both profile projections in one statement.
-- Every part reads the projections as they were before the statement: the predecessor of a new
-- change is the later of (its predecessor among stored changes, its predecessor in the batch);
-- a stored change that now follows a batch change (a late delivery) takes that change as old.
CREATE OR REPLACE FUNCTION project_events(p_after bigint, p_upto bigint) RETURNS void
LANGUAGE plpgsql AS $fn$
BEGIN
    EXECUTE $sql$
    WITH items AS MATERIALIZED (
        SELECT e.sdkappid, e.user_id, e.position, e.event_time, e.received_at,
               d.doc ->> 'Operator_Account' AS operator_account,
               e.metadata ->> 'OptPlatform' AS opt_platform,
               e.metadata ->> 'ClientIP' AS client_ip,
               i.tag, i.value
          FROM events e
         CROSS JOIN LATERAL (SELECT e.body::jsonb AS doc OFFSET 0) d
         CROSS JOIN LATERAL profile_items(d.doc) i
         WHERE e.position > $1 AND e.position <= $2
           AND e.command = 'Profile.CallbackPortraitSet'
    ),
    current AS (
        INSERT INTO profiles AS p (sdkappid, user_id, tag, value, event_time, position)
        SELECT DISTINCT ON (sdkappid, user_id, tag)
               sdkappid, user_id, tag, value, event_time, position
          FROM items
         ORDER BY sdkappid, user_id, tag, event_time DESC, position DESC
        ON CONFLICT (sdkappid, user_id, tag) DO UPDATE
           SET value = excluded.value, event_time = excluded.event_time,
               position = excluded.position
         WHERE (excluded.event_time, excluded.position) > (p.event_time, p.position)
    ),
    followers AS (
        UPDATE profile_changes r SET old = s.value
          FROM (SELECT DISTINCT ON (n.event_time, n.position, b.sdkappid, b.user_id, b.tag)
                       b.sdkappid, b.user_id, b.tag, n.event_time, n.position, b.value
                  FROM items b
                 CROSS JOIN LATERAL (
                       SELECT c.event_time, c.position FROM profile_changes c
                        WHERE c.sdkappid = b.sdkappid AND c.user_id = b.user_id
                          AND c.tag = b.tag
                          AND (c.event_time, c.position) > (b.event_time, b.position)
                        ORDER BY c.event_time, c.position LIMIT 1) n
                 ORDER BY n.event_time, n.position, b.sdkappid, b.user_id, b.tag,
                          b.event_time DESC, b.position DESC) s
         WHERE r.sdkappid = s.sdkappid AND r.user_id = s.user_id AND r.tag = s.tag
           AND r.event_time = s.event_time AND r.position = s.position
    ),
    batch AS (
        SELECT items.*,
               lag(value) OVER w AS batch_old,
               lag(event_time) OVER w AS batch_old_time,
               lag(position) OVER w AS batch_old_position
          FROM items
        WINDOW w AS (PARTITION BY sdkappid, user_id, tag ORDER BY event_time, position)
    )
    INSERT INTO profile_changes (sdkappid, user_id, position, tag, event_time, received_at,
                                 operator_account, opt_platform, client_ip, old, new)
    SELECT b.sdkappid, b.user_id, b.position, b.tag, b.event_time, b.received_at,
           b.operator_account, b.opt_platform, b.client_ip,
           CASE WHEN b.batch_old_position IS NOT NULL
                 AND (s.position IS NULL
                      OR (b.batch_old_time, b.batch_old_position) > (s.event_time, s.position))
                THEN b.batch_old ELSE s.new END,
           b.value
      FROM batch b
      LEFT JOIN LATERAL (
           SELECT c.new, c.event_time, c.position FROM profile_changes c
            WHERE c.sdkappid = b.sdkappid AND c.user_id = b.user_id AND c.tag = b.tag
              AND (c.event_time, c.position) < (b.event_time, b.position)
            ORDER BY c.event_time DESC, c.position DESC LIMIT 1) s ON true
    $sql$ USING p_after, p_upto;
END $fn$;
"""

UPGRADE = (
    r"""
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
    + PROJECT_EVENTS
)

# This project_events matches followers by all five columns, so it is right under the old key too.
DOWNGRADE = (
    r"""
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
    + PROJECT_EVENTS
)


def upgrade() -> None:
    execute_script(UPGRADE)


def downgrade() -> None:
    execute_script(DOWNGRADE)
