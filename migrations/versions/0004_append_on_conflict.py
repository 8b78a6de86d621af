"""De-duplicate appends through the unique index (ON CONFLICT) instead of a lookup first.

A PL/pgSQL lookup plan cached while `events` was small could pick the wrong index and scan every
event of the app for each delivery; the insert's arbiter index needs no plan choice.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27
"""

from collections.abc import Sequence

from app.sqlscript import execute_script

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UPGRADE = r"""
CREATE OR REPLACE FUNCTION append_events(
    p_sdkappid bigint[], p_command text[], p_user_id text[], p_event_time bigint[],
    p_received_at timestamptz[], p_metadata jsonb[], p_body text[],
    p_body_digest bytea[], p_digest bytea[])
RETURNS TABLE (idx integer, event_position bigint, duplicate boolean, lock_wait double precision)
LANGUAGE plpgsql AS $$
DECLARE
    head_position bigint;
    start_position bigint;
    head_hash     bytea;
    next_hash     bytea;
    version integer;
    asked timestamptz := clock_timestamp();
BEGIN
    SELECT h.position, h.hash INTO head_position, head_hash FROM log_head h FOR UPDATE;
    lock_wait := extract(epoch FROM clock_timestamp() - asked);
    start_position := head_position;
    FOR i IN 1 .. coalesce(array_length(p_body, 1), 0) LOOP
        idx := i;
        next_hash := sha256(head_hash || p_digest[i]);
        version := NULL;
        IF p_user_id[i] IS NOT NULL THEN
            SELECT coalesce(max(e.user_version), 0) + 1 INTO version FROM events e
             WHERE e.sdkappid = p_sdkappid[i] AND e.user_id = p_user_id[i];
        END IF;
        INSERT INTO events (position, sdkappid, command, user_id, user_version, event_time,
                            received_at, metadata, body, body_digest, digest, hash)
        VALUES (head_position + 1, p_sdkappid[i], p_command[i], p_user_id[i], version,
                p_event_time[i], p_received_at[i], p_metadata[i], p_body[i],
                p_body_digest[i], p_digest[i], next_hash)
        ON CONFLICT ON CONSTRAINT events_delivery_once DO NOTHING;
        IF FOUND THEN
            head_position := head_position + 1;
            head_hash := next_hash;
            PERFORM project_event(head_position, p_sdkappid[i], p_command[i], p_user_id[i],
                                  p_event_time[i], p_body[i]);
            event_position := head_position;
            duplicate := false;
        ELSE
            SELECT e.position INTO event_position FROM events e
             WHERE e.sdkappid = p_sdkappid[i] AND e.body_digest = p_body_digest[i];
            duplicate := true;
        END IF;
        RETURN NEXT;
    END LOOP;
    IF head_position > start_position THEN
        UPDATE log_head SET position = head_position, hash = head_hash;
        PERFORM pg_notify('profile_audit_events', head_position::text);
    END IF;
END $$;
"""


def upgrade() -> None:
    execute_script(UPGRADE)


def downgrade() -> None:
    raise NotImplementedError("0004 cannot be downgraded")
