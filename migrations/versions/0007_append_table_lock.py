"""Appenders queue on a table lock on log_head before taking its row.

With many concurrent appenders (many processes or hosts, one event per commit) waiting on the row
lock alone, PostgreSQL's tuple-lock dance made them contend; EXCLUSIVE mode (which readers of
log_head do not wait for) queues them in order.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-27
"""

from collections.abc import Sequence

from app.sqlscript import execute_script

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UPGRADE = r"""
CREATE OR REPLACE FUNCTION append_events(
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


def upgrade() -> None:
    execute_script(UPGRADE)


def downgrade() -> None:
    raise NotImplementedError("0007 cannot be downgraded")
