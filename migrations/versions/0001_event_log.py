"""Event log: events, log head, rejected deliveries, the append function, append-only trigger.

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

-- Projections hook here: applies the just-appended range (after, upto] to the read models;
-- 0002 replaces this body.
CREATE FUNCTION project_events(p_after bigint, p_upto bigint) RETURNS void
LANGUAGE plpgsql AS $$ BEGIN END $$;

CREATE FUNCTION chain_step(state bytea, head bytea, digest bytea) RETURNS bytea
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$ SELECT sha256(coalesce(state, head) || digest) $$;

-- chain_hash(head, digest) OVER (ORDER BY position): each row's hash, chained from head.
CREATE AGGREGATE chain_hash(bytea, bytea) (SFUNC = chain_step, STYPE = bytea);

"""

# Named on its own so that a later revision's downgrade can restore it.
APPEND_EVENTS = r"""-- Appends a batch in one round trip and a few statements, each planned for the batch at hand
-- (dynamic SQL: a plan cached while a table was small must not decide how a large one is read).
-- Deliveries already stored (same SDKAppID and body digest) are skipped; the new ones are
-- numbered, versioned per user, chained, inserted and projected; one NOTIFY tells the live feed.
-- Returns one row per input, with the seconds the batch waited for the append lock.
CREATE FUNCTION append_events(
    p_sdkappid bigint[], p_command text[], p_user_id text[], p_event_time bigint[],
    p_received_at timestamptz[], p_metadata jsonb[], p_body text[],
    p_body_digest bytea[], p_digest bytea[])
RETURNS TABLE (idx integer, event_position bigint, duplicate boolean, lock_wait double precision)
LANGUAGE plpgsql AS $fn$
DECLARE
    head_position bigint;
    head_hash     bytea;
    new_position  bigint;
    new_hash      bytea;
    asked timestamptz := clock_timestamp();
    waited double precision;
BEGIN
    -- A table lock queues appenders in order; many waiting on the row lock alone contend.
    LOCK TABLE log_head IN EXCLUSIVE MODE;
    SELECT h.position, h.hash INTO head_position, head_hash FROM log_head h FOR UPDATE;
    waited := extract(epoch FROM clock_timestamp() - asked);

    -- Number, version and chain the deliveries not stored yet (first occurrence in the batch).
    EXECUTE $sql$
    WITH input AS (
        SELECT * FROM unnest($1, $2, $3, $4, $5, $6, $7, $8, $9) WITH ORDINALITY
               AS t(sdkappid, command, user_id, event_time, received_at, metadata, body,
                    body_digest, digest, idx)
    ),
    fresh AS (
        SELECT DISTINCT ON (i.sdkappid, i.body_digest) i.*
          FROM input i
         WHERE NOT EXISTS (SELECT 1 FROM events e
                            WHERE e.sdkappid = i.sdkappid AND e.body_digest = i.body_digest)
         ORDER BY i.sdkappid, i.body_digest, i.idx
    ),
    numbered AS (
        SELECT f.*,
               $10 + row_number() OVER (ORDER BY f.idx) AS position,
               chain_hash($11, f.digest) OVER (ORDER BY f.idx) AS hash,
               CASE WHEN f.user_id IS NOT NULL THEN
                    coalesce((SELECT max(e.user_version) FROM events e
                               WHERE e.sdkappid = f.sdkappid AND e.user_id = f.user_id), 0)
                    + row_number() OVER (PARTITION BY f.sdkappid, f.user_id ORDER BY f.idx)
               END AS user_version
          FROM fresh f
    ),
    stored AS (
        INSERT INTO events (position, sdkappid, command, user_id, user_version, event_time,
                            received_at, metadata, body, body_digest, digest, hash)
        SELECT position, sdkappid, command, user_id, user_version, event_time,
               received_at, metadata, body, body_digest, digest, hash
          FROM numbered ORDER BY position
        RETURNING position, hash
    )
    SELECT position, hash FROM stored ORDER BY position DESC LIMIT 1
    $sql$
    INTO new_position, new_hash
    USING p_sdkappid, p_command, p_user_id, p_event_time, p_received_at, p_metadata, p_body,
          p_body_digest, p_digest, head_position, head_hash;

    IF new_position IS NOT NULL THEN
        PERFORM project_events(head_position, new_position);
        UPDATE log_head SET position = new_position, hash = new_hash;
        PERFORM pg_notify('profile_audit_events', new_position::text);
    END IF;

    RETURN QUERY EXECUTE $sql$
    SELECT i.idx::integer, e.position,
           e.position <= $3
           OR i.idx > min(i.idx) OVER (PARTITION BY i.sdkappid, i.body_digest),
           $4::double precision
      FROM unnest($1, $2) WITH ORDINALITY AS i(sdkappid, body_digest, idx)
      JOIN events e ON e.sdkappid = i.sdkappid AND e.body_digest = i.body_digest
     ORDER BY i.idx
    $sql$ USING p_sdkappid, p_body_digest, head_position, waited;
END $fn$;
"""

UPGRADE += APPEND_EVENTS

DOWNGRADE = r"""
DROP FUNCTION append_events(bigint[], text[], text[], bigint[], timestamptz[], jsonb[], text[],
                            bytea[], bytea[]);
DROP AGGREGATE chain_hash(bytea, bytea);
DROP FUNCTION chain_step(bytea, bytea, bytea);
DROP FUNCTION project_events(bigint, bigint);
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
