"""Set-based append: a batch is numbered, chained, inserted and projected in a few statements.

Per-event PL/pgSQL loops cost a dozen statements per event; here the whole batch takes four,
each planned for the batch at hand (dynamic SQL: a plan cached while a table was small must not
decide how a large one is read). The chain hash is a running aggregate over the batch.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-27
"""

from collections.abc import Sequence

from app.sqlscript import execute_script

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UPGRADE = r"""
DROP FUNCTION project_event(bigint, bigint, text, text, bigint, text);

CREATE FUNCTION chain_step(state bytea, head bytea, digest bytea) RETURNS bytea
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$ SELECT sha256(coalesce(state, head) || digest) $$;

-- chain_hash(head, digest) OVER (ORDER BY position): each row's hash, chained from head.
CREATE AGGREGATE chain_hash(bytea, bytea) (SFUNC = chain_step, STYPE = bytea);

-- Applies a range of just-appended events to both profile projections in one statement.
-- Every part reads the projections as they were before the statement: the predecessor of a new
-- change is the later of (its predecessor among stored changes, its predecessor in the batch);
-- a stored change that now follows a batch change (a late delivery) takes that change as old.
CREATE FUNCTION project_events(p_after bigint, p_upto bigint) RETURNS void
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
         CROSS JOIN LATERAL (SELECT e.body::jsonb AS doc) d
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
    raise NotImplementedError("0005 cannot be downgraded")
