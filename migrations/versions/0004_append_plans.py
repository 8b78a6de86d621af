"""Append with plans made once per connection: the append and the projection run as static SQL.

0001/0002 ran every statement of a batch as dynamic SQL so that no plan cached while a table was
small would decide how a large one is read. Parsing and planning those statements cost about as
much as executing them (~40 % of PostgreSQL's time per batch). Here the statements are static and
planned generically (once per connection and again after each ANALYZE of a table they read), and
each is written so that its plan does not depend on the statistics:

- Every lookup in a large table reads one B-tree in that B-tree's own order, bounded on both sides
  by the key it looks for, `ORDER BY` that order and `LIMIT 1`: no other index can answer it without
  sorting, so no statistics (not even an empty table's) make another plan cheaper. Incremental sorts
  are disabled in the function: they would let a leading-column range on another index compete.
- The lookup's row comparison, not an equality, carries the key: an equality on every key column
  would let the planner drop the ordering and pick any index starting with the same columns.
- The follower of a late delivery is updated by its tuple id, found by that lookup (no join whose
  method could become a scan of profile_changes).
- The just-appended events are read by position from the primary key, in order, counted.
- Identifiers are compared in their columns' "C" collation (0003), so the row comparisons are the
  B-trees' own.

jit is off in the function: a generic plan's estimate must not make every batch compile code.

append_events keeps its arguments and result; it also does in one statement what took three
(number and insert, move the log head, answer each input). project_events keeps its contract.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27
"""

from collections.abc import Sequence

from alembic import context

from app.sqlscript import execute_script

revision: str = "0004"
down_revision: str | None = "0003"
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
                  FROM (SELECT e.sdkappid, e.body_digest, e.position FROM events e
                         WHERE (e.sdkappid, e.body_digest) >= (t.sdkappid, t.body_digest)
                           AND (e.sdkappid, e.body_digest) <= (t.sdkappid, t.body_digest)
                         ORDER BY e.sdkappid, e.body_digest LIMIT 1) k
                 WHERE k.sdkappid = t.sdkappid AND k.body_digest = t.body_digest) AS known
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
                                FROM (SELECT e.sdkappid, e.user_id, e.user_version FROM events e
                                       WHERE (e.sdkappid, e.user_id) <= (f.sdkappid, f.user_id)
                                         AND (e.sdkappid, e.user_id) >= (f.sdkappid, f.user_id)
                                       ORDER BY e.sdkappid DESC, e.user_id DESC,
                                                e.user_version DESC
                                       LIMIT 1) v
                               WHERE v.sdkappid = f.sdkappid AND v.user_id = f.user_id), 0)
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

PROJECT_EVENTS = r"""
-- Applies a range of just-appended events to both profile projections in one statement.
-- Every part reads the projections as they were before the statement: the predecessor of a new
-- change is the later of (its predecessor among stored changes, its predecessor in the batch);
-- a stored change that now follows a batch change (a late delivery) takes that change as old.
-- Stored neighbours are found along profile_changes_pkey (see the revision's notes).
CREATE OR REPLACE FUNCTION project_events(p_after bigint, p_upto bigint) RETURNS void
LANGUAGE plpgsql
SET plan_cache_mode = force_generic_plan
SET enable_incremental_sort = off
SET jit = off
AS $fn$
BEGIN
    WITH items AS MATERIALIZED (
        SELECT e.sdkappid, e.user_id, e.position, e.event_time, e.received_at,
               d.doc ->> 'Operator_Account' AS operator_account,
               e.metadata ->> 'OptPlatform' AS opt_platform,
               e.metadata ->> 'ClientIP' AS client_ip,
               i.tag COLLATE "C" AS tag, i.value
          FROM (SELECT * FROM events e
                 WHERE e.position > p_after AND e.position <= p_upto
                 ORDER BY e.position LIMIT p_upto - p_after) e
         CROSS JOIN LATERAL (SELECT e.body::jsonb AS doc OFFSET 0) d
         CROSS JOIN LATERAL profile_items(d.doc) i
         WHERE e.command = 'Profile.CallbackPortraitSet'
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
          FROM (SELECT DISTINCT ON (n.ctid) n.ctid, b.value
                  FROM items b
                 CROSS JOIN LATERAL (
                       SELECT c.ctid, c.sdkappid, c.user_id, c.tag FROM profile_changes c
                        WHERE (c.sdkappid, c.user_id, c.tag, c.event_time, c.position)
                              > (b.sdkappid, b.user_id, b.tag, b.event_time, b.position)
                          AND (c.sdkappid, c.user_id, c.tag) <= (b.sdkappid, b.user_id, b.tag)
                        ORDER BY c.sdkappid, c.user_id, c.tag, c.event_time, c.position
                        LIMIT 1) n
                 WHERE n.sdkappid = b.sdkappid AND n.user_id = b.user_id AND n.tag = b.tag
                 ORDER BY n.ctid, b.event_time DESC, b.position DESC) s
         WHERE r.ctid = s.ctid
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
           SELECT p.new, p.event_time, p.position
             FROM (SELECT c.sdkappid, c.user_id, c.tag, c.new, c.event_time, c.position
                     FROM profile_changes c
                    WHERE (c.sdkappid, c.user_id, c.tag, c.event_time, c.position)
                          < (b.sdkappid, b.user_id, b.tag, b.event_time, b.position)
                      AND (c.sdkappid, c.user_id, c.tag) >= (b.sdkappid, b.user_id, b.tag)
                    ORDER BY c.sdkappid DESC, c.user_id DESC, c.tag DESC, c.event_time DESC,
                             c.position DESC
                    LIMIT 1) p
            WHERE p.sdkappid = b.sdkappid AND p.user_id = b.user_id AND p.tag = b.tag) s ON true;
END $fn$;
"""

UPGRADE = APPEND_EVENTS + PROJECT_EVENTS


def upgrade() -> None:
    execute_script(UPGRADE)


def downgrade() -> None:
    # The earlier definitions, from the earlier revisions' own modules (loaded by Alembic);
    # 0001 creates append_events without OR REPLACE, and the SET clauses must go with it.
    event_log = context.script.get_revision("0001").module
    projections = context.script.get_revision("0002").module
    execute_script(
        "DROP FUNCTION append_events(bigint[], text[], text[], bigint[], timestamptz[], jsonb[], text[],"
        " bytea[], bytea[]);\n" + event_log.APPEND_EVENTS + projections.PROJECT_EVENTS
    )
