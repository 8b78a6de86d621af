"""The change-history projection: one row per (event, tag) with the tag's old and new value.

`old` is the tag's value just before this change in (EventTime, position) order, so a late
delivery that lands between two earlier ones shows up where it belongs. Applied inline, batch by
batch, by the SQL function `project_events` (migrations); rebuilt by FILL_SQL.
"""

NAME = "profile_changes"
VERSION = 1
TABLE = "profile_changes"

# user_id leads the sort: the first key gets abbreviated (prefix) keys, and sdkappid hardly varies.
FILL_SQL = """
INSERT INTO {target} (sdkappid, user_id, position, tag, event_time, received_at,
                      operator_account, opt_platform, client_ip, old, new)
SELECT sdkappid, user_id, position, tag, event_time, received_at,
       operator_account, opt_platform, client_ip,
       lag(value) OVER (PARTITION BY user_id, sdkappid, tag ORDER BY event_time, position),
       value
  FROM {stage}
"""
