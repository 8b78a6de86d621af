"""Append reports its lock wait and notifies listeners (the live feed) once per batch.

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

SIGNATURE = (
    "append_events(bigint[], text[], text[], bigint[], timestamptz[], jsonb[], text[], bytea[], bytea[])"
)

UPGRADE = rf"""
DROP FUNCTION {SIGNATURE};

-- As in 0001, plus: lock_wait (seconds spent waiting for the log head, the same on every row)
-- and one NOTIFY profile_audit_events with the new head position when anything was appended.
CREATE FUNCTION append_events(
    p_sdkappid bigint[], p_command text[], p_user_id text[], p_event_time bigint[],
    p_received_at timestamptz[], p_metadata jsonb[], p_body text[],
    p_body_digest bytea[], p_digest bytea[])
RETURNS TABLE (idx integer, event_position bigint, duplicate boolean, lock_wait double precision)
LANGUAGE plpgsql AS $$
DECLARE
    head_position bigint;
    start_position bigint;
    head_hash     bytea;
    found_position bigint;
    version integer;
    asked timestamptz := clock_timestamp();
BEGIN
    SELECT h.position, h.hash INTO head_position, head_hash FROM log_head h FOR UPDATE;
    lock_wait := extract(epoch FROM clock_timestamp() - asked);
    start_position := head_position;
    FOR i IN 1 .. coalesce(array_length(p_body, 1), 0) LOOP
        idx := i;
        SELECT e.position INTO found_position FROM events e
         WHERE e.sdkappid = p_sdkappid[i] AND e.body_digest = p_body_digest[i];
        IF FOUND THEN
            event_position := found_position;
            duplicate := true;
            RETURN NEXT;
            CONTINUE;
        END IF;
        head_position := head_position + 1;
        head_hash := sha256(head_hash || p_digest[i]);
        version := NULL;
        IF p_user_id[i] IS NOT NULL THEN
            SELECT coalesce(max(e.user_version), 0) + 1 INTO version FROM events e
             WHERE e.sdkappid = p_sdkappid[i] AND e.user_id = p_user_id[i];
        END IF;
        INSERT INTO events (position, sdkappid, command, user_id, user_version, event_time,
                            received_at, metadata, body, body_digest, digest, hash)
        VALUES (head_position, p_sdkappid[i], p_command[i], p_user_id[i], version,
                p_event_time[i], p_received_at[i], p_metadata[i], p_body[i],
                p_body_digest[i], p_digest[i], head_hash);
        PERFORM project_event(head_position, p_sdkappid[i], p_command[i], p_user_id[i],
                              p_event_time[i], p_body[i]);
        event_position := head_position;
        duplicate := false;
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
    raise NotImplementedError("0003 cannot be downgraded: restore 0001's append_events by hand")
