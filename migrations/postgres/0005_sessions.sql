-- Read models of the terminal relay (projection "sessions"): terminal sessions, and the relay's activity log
-- (tickets issued, redeemed and refused, connections the firewall blocked).
-- Times are RFC 3339 UTC text with microseconds, so they sort as text on both backends.

CREATE TABLE terminal_sessions
(
    session_id   text   PRIMARY KEY,
    user_email   text   NOT NULL,
    workspace    text   NOT NULL,
    agent        text   NOT NULL,
    kind         text   NOT NULL,
    client_ip    text   NOT NULL,
    user_agent   text   NOT NULL,
    opened_at    text   NOT NULL,
    closed_at    text,
    close_reason text,
    bytes_in     bigint NOT NULL,
    bytes_out    bigint NOT NULL,
    duration_ms  bigint,
    version      bigint NOT NULL
);

-- Every list is newest first, optionally for one user, one workspace, or only the open ones.
CREATE INDEX terminal_sessions_by_time ON terminal_sessions (opened_at, session_id);
CREATE INDEX terminal_sessions_by_user ON terminal_sessions (user_email, opened_at, session_id);
CREATE INDEX terminal_sessions_by_workspace ON terminal_sessions (workspace, opened_at, session_id);
CREATE INDEX terminal_sessions_open ON terminal_sessions (closed_at, opened_at, session_id);

-- One row per relay event. activity_id is `{aggregate type}:{aggregate id}:{sequence}`.
CREATE TABLE relay_activity
(
    activity_id text   PRIMARY KEY,
    at          text   NOT NULL,
    kind        text   NOT NULL,
    ticket      text,
    user_email  text,
    workspace   text   NOT NULL,
    client_ip   text,
    reason      text,
    rule        bigint
);

CREATE INDEX relay_activity_by_time ON relay_activity (at, activity_id);
CREATE INDEX relay_activity_by_kind ON relay_activity (kind, at, activity_id);
CREATE INDEX relay_activity_by_user ON relay_activity (user_email, at, activity_id);
CREATE INDEX relay_activity_by_workspace ON relay_activity (workspace, at, activity_id);
CREATE INDEX relay_activity_by_ticket ON relay_activity (ticket, kind);
