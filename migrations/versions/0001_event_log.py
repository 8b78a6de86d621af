"""Event log: events, log head, rejected deliveries, append function, append-only trigger.

Revision ID: 0001
Revises:
Create Date: 2026-11-27
"""

from collections.abc import Sequence

from app.sqlscript import execute_script

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UPGRADE = r"""
CREATE TABLE log_head (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    position  bigint  NOT NULL,
    hash      bytea   NOT NULL
);
COMMENT ON TABLE log_head IS
    'The last position and chain hash; its row lock serialises appends (commit order = position order).';
INSERT INTO log_head (position, hash) VALUES (0, decode(repeat('00', 32), 'hex'));

CREATE TABLE events (
    position     bigint      PRIMARY KEY,
    sdkappid     bigint      NOT NULL,
    command      text        NOT NULL,
    user_id      text,
    user_version integer,
    event_time   bigint,
    received_at  timestamptz NOT NULL,
    metadata     jsonb       NOT NULL,
    body         text        NOT NULL,
    body_digest  bytea       NOT NULL,
    digest       bytea       NOT NULL,
    hash         bytea       NOT NULL,
    CONSTRAINT events_delivery_once UNIQUE (sdkappid, body_digest),
    CONSTRAINT events_user_version UNIQUE (sdkappid, user_id, user_version)
);
COMMENT ON COLUMN events.body IS 'The delivered JSON body, canonical (sorted keys, compact).';
COMMENT ON COLUMN events.digest IS 'SHA-256 of the canonical event record (app.ingest.event_digest).';
COMMENT ON COLUMN events.hash IS 'SHA-256(previous hash || digest): the tamper-evident chain.';

CREATE TABLE rejected_deliveries (
    id          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    sdkappid    bigint      NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(),
    query       jsonb       NOT NULL,
    body        bytea       NOT NULL,
    reason      text        NOT NULL
);

CREATE FUNCTION events_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'events is append-only: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END $$;
CREATE TRIGGER events_append_only BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION events_refuse_change();
CREATE TRIGGER events_no_truncate BEFORE TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION events_refuse_change();

-- Projections hook here; later migrations replace this body.
CREATE FUNCTION project_event(p_position bigint, p_sdkappid bigint, p_command text,
                              p_user_id text, p_event_time bigint, p_body text)
RETURNS void LANGUAGE plpgsql AS $$ BEGIN END $$;

-- Appends a batch in one round trip: locks the head, skips deliveries already stored,
-- numbers and chains the new ones, inserts and projects them. Returns one row per input.
CREATE FUNCTION append_events(
    p_sdkappid bigint[], p_command text[], p_user_id text[], p_event_time bigint[],
    p_received_at timestamptz[], p_metadata jsonb[], p_body text[],
    p_body_digest bytea[], p_digest bytea[])
RETURNS TABLE (idx integer, event_position bigint, duplicate boolean)
LANGUAGE plpgsql AS $$
DECLARE
    head_position bigint;
    head_hash     bytea;
    found_position bigint;
    version integer;
BEGIN
    SELECT h.position, h.hash INTO head_position, head_hash FROM log_head h FOR UPDATE;
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
    UPDATE log_head SET position = head_position, hash = head_hash;
END $$;
"""

DOWNGRADE = r"""
DROP FUNCTION append_events(bigint[], text[], text[], bigint[], timestamptz[], jsonb[], text[],
                            bytea[], bytea[]);
DROP FUNCTION project_event(bigint, bigint, text, text, bigint, text);
DROP TABLE rejected_deliveries;
DROP TRIGGER events_no_truncate ON events;
DROP TABLE events;
DROP FUNCTION events_refuse_change();
DROP TABLE log_head;
"""


def upgrade() -> None:
    execute_script(UPGRADE)


def downgrade() -> None:
    execute_script(DOWNGRADE)
