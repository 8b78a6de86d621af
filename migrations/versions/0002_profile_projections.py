"""Profile projections: current profile and change history, applied inline batch by batch.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27
"""

from collections.abc import Sequence

from app.sqlscript import execute_script

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UPGRADE = r"""
CREATE INDEX events_by_user_time ON events (sdkappid, user_id, event_time, position)
    WHERE user_id IS NOT NULL;

CREATE TABLE projection_versions (
    name          text        PRIMARY KEY,
    version       integer     NOT NULL,
    last_position bigint      NOT NULL DEFAULT 0,
    rebuilt_at    timestamptz
);
COMMENT ON TABLE projection_versions IS
    'The version of the code each projection table was built with; stale until rebuilt when it differs.';

-- The value of each tag now: the change with the latest (event_time, position) wins.
CREATE TABLE profiles (
    sdkappid   bigint NOT NULL,
    user_id    text   NOT NULL,
    tag        text   NOT NULL,
    value      jsonb  NOT NULL,
    event_time bigint NOT NULL,
    position   bigint NOT NULL,
    CONSTRAINT profiles_pkey PRIMARY KEY (sdkappid, user_id, tag)
);

-- One row per (event, tag); old is the tag's value just before this change in event_time order.
CREATE TABLE profile_changes (
    sdkappid         bigint      NOT NULL,
    user_id          text        NOT NULL,
    position         bigint      NOT NULL,
    tag              text        NOT NULL,
    event_time       bigint      NOT NULL,
    received_at      timestamptz NOT NULL,
    operator_account text,
    opt_platform     text,
    client_ip        text,
    old              jsonb,
    new              jsonb       NOT NULL,
    CONSTRAINT profile_changes_pkey PRIMARY KEY (position, tag)
);
CREATE INDEX profile_changes_by_tag_time
    ON profile_changes (sdkappid, user_id, tag, event_time, position);
CREATE INDEX profile_changes_by_user_time
    ON profile_changes (sdkappid, user_id, event_time DESC, position DESC);

-- A projection built on a log that already has events must be rebuilt before it is trusted.
INSERT INTO projection_versions (name, version)
SELECT name, CASE WHEN EXISTS (SELECT 1 FROM events) THEN 0 ELSE 1 END
  FROM (VALUES ('profiles'), ('profile_changes')) AS p(name);

-- The changed items of a Profile.CallbackPortraitSet body, one per tag (the last item wins).
CREATE FUNCTION profile_items(p_body jsonb)
RETURNS TABLE (tag text, value jsonb) LANGUAGE sql IMMUTABLE AS $$
    SELECT DISTINCT ON (item ->> 'Tag') item ->> 'Tag', item -> 'Value'
      FROM jsonb_array_elements(p_body -> 'ProfileItem') WITH ORDINALITY AS i(item, ord)
     ORDER BY item ->> 'Tag', ord DESC
$$;

"""

# Named on its own so that a later revision's downgrade can restore it.
PROJECT_EVENTS = r"""-- Applies a range of just-appended events to both profile projections in one statement.
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
          FROM (SELECT DISTINCT ON (n.position, n.tag) n.position, n.tag, b.value
                  FROM items b
                 CROSS JOIN LATERAL (
                       SELECT c.position, c.tag FROM profile_changes c
                        WHERE c.sdkappid = b.sdkappid AND c.user_id = b.user_id
                          AND c.tag = b.tag
                          AND (c.event_time, c.position) > (b.event_time, b.position)
                        ORDER BY c.event_time, c.position LIMIT 1) n
                 ORDER BY n.position, n.tag, b.event_time DESC, b.position DESC) s
         WHERE r.position = s.position AND r.tag = s.tag
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

UPGRADE += PROJECT_EVENTS

DOWNGRADE = r"""
CREATE OR REPLACE FUNCTION project_events(p_after bigint, p_upto bigint) RETURNS void
LANGUAGE plpgsql AS $$ BEGIN END $$;
DROP FUNCTION profile_items(jsonb);
DROP TABLE profile_changes;
DROP TABLE profiles;
DROP TABLE projection_versions;
DROP INDEX events_by_user_time;
"""


def upgrade() -> None:
    execute_script(UPGRADE)


def downgrade() -> None:
    execute_script(DOWNGRADE)
