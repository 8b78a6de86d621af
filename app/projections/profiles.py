"""The current-profile projection: per (SDKAppID, UserID, tag), the newest value by EventTime.

Applied inline, batch by batch, by the SQL function `project_events` (migrations); rebuilt by
FILL_SQL, then brought up to date by CATCH_UP_SQL, which applies new items as `project_events` does.
"""

NAME = "profiles"
VERSION = 1
TABLE = "profiles"

# From the staged profile items ({stage}, shaped like profile_changes) into the shadow table
# ({target}): per tag, the item with the latest (event_time, position) wins. user_id leads the
# sort: the first key gets abbreviated (prefix) keys, and sdkappid hardly varies.
FILL_SQL = """
INSERT INTO {target} AS p (sdkappid, user_id, tag, value, event_time, position)
SELECT DISTINCT ON (user_id, sdkappid, tag) sdkappid, user_id, tag, new, event_time, position
  FROM {stage}
 ORDER BY user_id, sdkappid, tag, event_time DESC, position DESC
"""

# The staged items of later events ({stage}) applied to the filled table ({target}): a tag's row
# changes only for an item with a later (event_time, position), so late deliveries leave it be.
CATCH_UP_SQL = (
    FILL_SQL
    + """ON CONFLICT (user_id, sdkappid, tag) DO UPDATE
   SET value = excluded.value, event_time = excluded.event_time, position = excluded.position
 WHERE (excluded.event_time, excluded.position) > (p.event_time, p.position)
"""
)
