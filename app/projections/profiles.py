"""The current-profile projection: per (SDKAppID, UserID, tag), the newest value by EventTime.

Applied inline, batch by batch, by the SQL function `project_events` (migrations); rebuilt by
FILL_SQL.
"""

NAME = "profiles"
VERSION = 1
TABLE = "profiles"

# From the staged profile items ({stage}, shaped like profile_changes) into the shadow table
# ({target}): per tag, the item with the latest (event_time, position) wins. user_id leads the
# sort: the first key gets abbreviated (prefix) keys, and sdkappid hardly varies.
FILL_SQL = """
INSERT INTO {target} (sdkappid, user_id, tag, value, event_time, position)
SELECT DISTINCT ON (user_id, sdkappid, tag) sdkappid, user_id, tag, new, event_time, position
  FROM {stage}
 ORDER BY user_id, sdkappid, tag, event_time DESC, position DESC
"""
