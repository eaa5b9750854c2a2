-- Read models of the terminal relay (projection "sessions"): terminal sessions, and the relay's activity log
-- (tickets issued, redeemed and refused, connections the firewall blocked).
-- Times are RFC 3339 UTC text with microseconds, so they sort as text on both backends.

CREATE TABLE terminal_sessions
(
    session_id   TEXT   PRIMARY KEY,
    user_email   TEXT   NOT NULL,
    workspace    TEXT   NOT NULL,
    agent        TEXT   NOT NULL,
    kind         TEXT   NOT NULL,
    client_ip    TEXT   NOT NULL,
    user_agent   TEXT   NOT NULL,
    opened_at    TEXT   NOT NULL,
    closed_at    TEXT,
    close_reason TEXT,
    bytes_in     INTEGER NOT NULL,
    bytes_out    INTEGER NOT NULL,
    duration_ms  INTEGER,
    version      INTEGER NOT NULL
);

-- Every list is newest first, optionally for one user, one workspace, or only the open ones.
CREATE INDEX terminal_sessions_by_time ON terminal_sessions (opened_at, session_id);
CREATE INDEX terminal_sessions_by_user ON terminal_sessions (user_email, opened_at, session_id);
CREATE INDEX terminal_sessions_by_workspace ON terminal_sessions (workspace, opened_at, session_id);
CREATE INDEX terminal_sessions_open ON terminal_sessions (closed_at, opened_at, session_id);

-- One row per relay event. activity_id is `{aggregate type}:{aggregate id}:{sequence}`.
CREATE TABLE relay_activity
(
    activity_id TEXT   PRIMARY KEY,
    at          TEXT   NOT NULL,
    kind        TEXT   NOT NULL,
    ticket      TEXT,
    user_email  TEXT,
    workspace   TEXT   NOT NULL,
    client_ip   TEXT,
    reason      TEXT,
    rule        INTEGER
);

CREATE INDEX relay_activity_by_time ON relay_activity (at, activity_id);
CREATE INDEX relay_activity_by_kind ON relay_activity (kind, at, activity_id);
CREATE INDEX relay_activity_by_user ON relay_activity (user_email, at, activity_id);
CREATE INDEX relay_activity_by_workspace ON relay_activity (workspace, at, activity_id);
CREATE INDEX relay_activity_by_ticket ON relay_activity (ticket, kind);
