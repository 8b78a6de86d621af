"""profile_changes no longer stores `old`: a change's old value is read from its predecessor.

`old` is, by definition, the `new` of the same tag's previous change in (EventTime, position)
order, and that row sits right before it in profile_changes_pkey. Stored, it had to be kept right
by every append (a lookup of the predecessor per item, and an update of the follower when a late
delivery lands between two changes) and by every rebuild (a window sort of the whole history).
Read from the predecessor, an append only inserts, a rebuild only copies, and the read API looks
the predecessor up (app/queries.py). The column's content is implied by the rest of the table,
so dropping it changes no answer: the projection keeps its version and needs no rebuild.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-27
"""

from collections.abc import Sequence

from alembic import context

from app.sqlscript import execute_script

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PROJECT_EVENTS = r"""
-- Applies a range of just-appended events to both profile projections in one statement: each
-- profile item becomes a change, and the profile keeps, per tag, the latest by (EventTime, position).
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
    )
    INSERT INTO profile_changes (sdkappid, user_id, position, tag, event_time, received_at,
                                 operator_account, opt_platform, client_ip, new)
    SELECT sdkappid, user_id, position, tag, event_time, received_at,
           operator_account, opt_platform, client_ip, value
      FROM items;
END $fn$;
"""

UPGRADE = "ALTER TABLE profile_changes DROP COLUMN old;\n" + PROJECT_EVENTS

# Back to a stored `old`: each change takes its predecessor's `new`, then 0004's project_events.
RESTORE_OLD = """
ALTER TABLE profile_changes ADD COLUMN old jsonb;
UPDATE profile_changes c SET old = p.old
  FROM (SELECT ctid AS row_id,
               lag(new) OVER (PARTITION BY sdkappid, user_id, tag ORDER BY event_time, position) AS old
          FROM profile_changes) p
 WHERE c.ctid = p.row_id AND p.old IS NOT NULL;
"""


def upgrade() -> None:
    execute_script(UPGRADE)


def downgrade() -> None:
    append_plans = context.script.get_revision("0004").module
    execute_script(RESTORE_OLD + append_plans.PROJECT_EVENTS)
