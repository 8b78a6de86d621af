"""The append's lookups end where their key ends on every PostgreSQL version, not only on 18.

0004 bounded each lookup in the log by a row comparison on both sides, such as
`(sdkappid, body_digest) >= (…) AND (sdkappid, body_digest) <= (…)`. PostgreSQL 18's B-tree scans
stop at the first entry past such an upper bound. Up to 17 they stop only when the row's first
column passes it: a lookup that found nothing read on through every later entry of the same
SDKAppID. That is the usual case: a new delivery has no stored twin, and a user's first delivery
has no earlier version. Each append then cost time in proportion to the log's size. On
PostgreSQL 15 a batch of 64 took 8 ms at 600 events and 110 ms at 12,000.

Here the SDKAppID is an equality and the bounds on the next column are plain comparisons. Every
version stops such a scan as soon as the column passes its bound. The plan is unchanged, and no
other index can give the order these lookups read (the reasons in 0004 hold).

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-27
"""

from collections.abc import Sequence

from alembic import context

from app.sqlscript import execute_script

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

APPEND_EVENTS = r"""
-- Appends a batch in one round trip: deliveries already stored (same SDKAppID and body digest)
-- are skipped; the new ones are numbered, versioned per user, chained, inserted and projected,
-- and the log head moves; one NOTIFY tells the live feed. Returns one row per input, with the
-- seconds the batch waited for the append lock.
CREATE OR REPLACE FUNCTION append_events(
    p_sdkappid bigint[], p_command text[], p_user_id text[], p_event_time bigint[],
    p_received_at timestamptz[], p_metadata jsonb[], p_body text[],
    p_body_digest bytea[], p_digest bytea[])
RETURNS TABLE (idx integer, event_position bigint, duplicate boolean, lock_wait double precision)
LANGUAGE plpgsql
SET plan_cache_mode = force_generic_plan
SET enable_incremental_sort = off
SET jit = off
AS $fn$
DECLARE
    head_position bigint;
    head_hash     bytea;
    new_position  bigint;
    positions     bigint[];
    duplicates    boolean[];
    asked timestamptz := clock_timestamp();
    waited double precision;
BEGIN
    -- A table lock queues appenders in order; many waiting on the row lock alone contend.
    LOCK TABLE log_head IN EXCLUSIVE MODE;
    SELECT h.position, h.hash INTO head_position, head_hash FROM log_head h FOR UPDATE;
    waited := extract(epoch FROM clock_timestamp() - asked);

    WITH input AS MATERIALIZED (
        SELECT t.sdkappid, t.command, t.user_id COLLATE "C" AS user_id, t.event_time,
               t.received_at, t.metadata, t.body, t.body_digest, t.digest, t.idx,
               -- the stored delivery, along events_delivery_once
               (SELECT k.position
                  FROM (SELECT e.body_digest, e.position FROM events e
                         WHERE e.sdkappid = t.sdkappid
                           AND e.body_digest >= t.body_digest AND e.body_digest <= t.body_digest
                         ORDER BY e.sdkappid, e.body_digest LIMIT 1) k
                 WHERE k.body_digest = t.body_digest) AS known
          FROM unnest(p_sdkappid, p_command, p_user_id, p_event_time, p_received_at, p_metadata,
                      p_body, p_body_digest, p_digest) WITH ORDINALITY
               AS t(sdkappid, command, user_id, event_time, received_at, metadata, body,
                    body_digest, digest, idx)
    ),
    -- The deliveries not stored yet, each at its first occurrence in the batch.
    fresh AS (
        SELECT DISTINCT ON (i.sdkappid, i.body_digest) i.*
          FROM input i
         WHERE i.known IS NULL
         ORDER BY i.sdkappid, i.body_digest, i.idx
    ),
    numbered AS MATERIALIZED (
        SELECT f.*,
               head_position + row_number() OVER (ORDER BY f.idx) AS position,
               chain_hash(head_hash, f.digest) OVER (ORDER BY f.idx) AS hash,
               CASE WHEN f.user_id IS NOT NULL THEN
                    -- the user's last version, along events_user_version backwards
                    coalesce((SELECT v.user_version
                                FROM (SELECT e.user_id, e.user_version FROM events e
                                       WHERE e.sdkappid = f.sdkappid
                                         AND e.user_id <= f.user_id AND e.user_id >= f.user_id
                                       ORDER BY e.sdkappid DESC, e.user_id DESC,
                                                e.user_version DESC
                                       LIMIT 1) v
                               WHERE v.user_id = f.user_id), 0)
                    + row_number() OVER (PARTITION BY f.sdkappid, f.user_id ORDER BY f.idx)
               END AS user_version
          FROM fresh f
    ),
    stored AS (
        INSERT INTO events (position, sdkappid, command, user_id, user_version, event_time,
                            received_at, metadata, body, body_digest, digest, hash)
        SELECT n.position, n.sdkappid, n.command, n.user_id, n.user_version, n.event_time,
               n.received_at, n.metadata, n.body, n.body_digest, n.digest, n.hash
          FROM numbered n
         ORDER BY n.position
    ),
    head AS (
        UPDATE log_head SET position = l.position, hash = l.hash
          FROM (SELECT n.position, n.hash FROM numbered n ORDER BY n.position DESC LIMIT 1) l
    )
    -- A repeat inside the batch answers its first occurrence's position, as a duplicate.
    SELECT array_agg(coalesce(i.known, n.position) ORDER BY i.idx),
           array_agg(i.known IS NOT NULL OR n.idx <> i.idx ORDER BY i.idx),
           max(n.position)
      INTO positions, duplicates, new_position
      FROM input i
      LEFT JOIN numbered n ON n.sdkappid = i.sdkappid AND n.body_digest = i.body_digest;

    IF new_position IS NOT NULL THEN
        PERFORM project_events(head_position, new_position);
        PERFORM pg_notify('profile_audit_events', new_position::text);
    END IF;

    RETURN QUERY SELECT o::integer, positions[o], duplicates[o], waited
                   FROM generate_subscripts(positions, 1) AS o;
END $fn$;
"""


def upgrade() -> None:
    execute_script(APPEND_EVENTS)


def downgrade() -> None:
    execute_script(context.script.get_revision("0004").module.APPEND_EVENTS)
