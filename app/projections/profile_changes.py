"""The change-history projection: one row per (event, tag) with the tag's new value.

A change's `old` is not stored: it is the `new` of the same tag's previous change in
(EventTime, position) order, the row just before it in the table's key, and the read API looks it
up there (app/queries.py). So a late delivery that lands between two earlier ones is an insert like
any other. Applied inline, batch by batch, by the SQL function `project_events` (migrations).
A rebuild extracts the log's items straight into this table's shadow, which the other projections
then read as their stage (app/rebuild.py); FILL_SQL copies from a separate stage, and so does
CATCH_UP_SQL: the changes of later events are new rows like any other.
"""

NAME = "profile_changes"
VERSION = 1
TABLE = "profile_changes"

FILL_SQL = """
INSERT INTO {target} (sdkappid, user_id, position, tag, event_time, received_at,
                      operator_account, opt_platform, client_ip, new)
SELECT sdkappid, user_id, position, tag, event_time, received_at,
       operator_account, opt_platform, client_ip, new
  FROM {stage}
"""

CATCH_UP_SQL = FILL_SQL
