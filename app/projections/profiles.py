"""The current-profile projection: per (SDKAppID, UserID, tag), the newest value by EventTime.

Applied inline, batch by batch, by the SQL function `project_events` (migrations); rebuilt by
FILL_SQL.
"""

NAME = "profiles"
VERSION = 1
TABLE = "profiles"

# From the staged profile items ({stage}) into the shadow table ({target}): per tag, the item with
# the latest (event_time, position) wins.
FILL_SQL = """
INSERT INTO {target} (sdkappid, user_id, tag, value, event_time, position)
SELECT DISTINCT ON (sdkappid, user_id, tag) sdkappid, user_id, tag, value, event_time, position
  FROM {stage}
 ORDER BY sdkappid, user_id, tag, event_time DESC, position DESC
"""
