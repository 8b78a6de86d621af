"""Profile projections: current profile and change history, applied inline by append_events.

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

CREATE OR REPLACE FUNCTION project_event(p_position bigint, p_sdkappid bigint, p_command text,
                                         p_user_id text, p_event_time bigint, p_body text)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    doc jsonb;
    meta jsonb;
    received timestamptz;
    item record;
    previous jsonb;
BEGIN
    IF p_command <> 'Profile.CallbackPortraitSet' THEN
        RETURN;
    END IF;
    doc := p_body::jsonb;
    SELECT e.metadata, e.received_at INTO meta, received FROM events e WHERE e.position = p_position;
    FOR item IN SELECT * FROM profile_items(doc) LOOP
        -- profiles: last writer by event_time, ties to the later position (this one).
        INSERT INTO profiles AS p (sdkappid, user_id, tag, value, event_time, position)
        VALUES (p_sdkappid, p_user_id, item.tag, item.value, p_event_time, p_position)
        ON CONFLICT (sdkappid, user_id, tag) DO UPDATE
           SET value = excluded.value, event_time = excluded.event_time,
               position = excluded.position
         WHERE (excluded.event_time, excluded.position) > (p.event_time, p.position);

        -- profile_changes: old comes from the change just before in (event_time, position)
        -- order; the change just after (a late delivery lands between two) now follows this one.
        SELECT c.new INTO previous FROM profile_changes c
         WHERE c.sdkappid = p_sdkappid AND c.user_id = p_user_id AND c.tag = item.tag
           AND (c.event_time, c.position) < (p_event_time, p_position)
         ORDER BY c.event_time DESC, c.position DESC LIMIT 1;
        IF NOT FOUND THEN
            previous := NULL;
        END IF;
        INSERT INTO profile_changes (sdkappid, user_id, position, tag, event_time, received_at,
                                     operator_account, opt_platform, client_ip, old, new)
        VALUES (p_sdkappid, p_user_id, p_position, item.tag, p_event_time, received,
                doc ->> 'Operator_Account', meta ->> 'OptPlatform', meta ->> 'ClientIP',
                previous, item.value);
        UPDATE profile_changes c SET old = item.value
         WHERE (c.position, c.tag) = (
             SELECT n.position, n.tag FROM profile_changes n
              WHERE n.sdkappid = p_sdkappid AND n.user_id = p_user_id AND n.tag = item.tag
                AND (n.event_time, n.position) > (p_event_time, p_position)
              ORDER BY n.event_time, n.position LIMIT 1);
    END LOOP;
END $$;
"""

DOWNGRADE = r"""
CREATE OR REPLACE FUNCTION project_event(p_position bigint, p_sdkappid bigint, p_command text,
                                         p_user_id text, p_event_time bigint, p_body text)
RETURNS void LANGUAGE plpgsql AS $$ BEGIN END $$;
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
