-- Read models of the publishing and trust rules aggregates (projections "publish_requests" and "trust_rules").
-- Times are RFC 3339 UTC text with microseconds, so they sort as text on both backends.

CREATE TABLE publish_requests
(
    request_id         TEXT   PRIMARY KEY,
    workspace_id       TEXT   NOT NULL,
    blueprint_key      TEXT   NOT NULL,
    subdomain          TEXT   NOT NULL,
    builder            TEXT   NOT NULL,
    commit_id          TEXT   NOT NULL,
    files              INTEGER NOT NULL,
    insertions         INTEGER NOT NULL,
    deletions          INTEGER NOT NULL,
    patch              TEXT,
    message            TEXT   NOT NULL,
    status             TEXT   NOT NULL,
    approvals_required INTEGER NOT NULL,
    approvals          INTEGER NOT NULL,
    submitted_at       TEXT   NOT NULL,
    expires_at         TEXT   NOT NULL,
    decided_at         TEXT,
    decided_by         TEXT,
    decision_reason    TEXT,
    trust_rule_id      TEXT,
    updated_at         TEXT   NOT NULL,
    version            INTEGER NOT NULL
);

-- The approvals queue: pending, oldest first, optionally for one blueprint.
CREATE INDEX publish_requests_queue ON publish_requests (status, submitted_at, request_id);
CREATE INDEX publish_requests_queue_by_blueprint ON publish_requests (blueprint_key, status, submitted_at, request_id);
-- A builder's own requests, newest first.
CREATE INDEX publish_requests_by_builder ON publish_requests (builder, submitted_at, request_id);
-- Publish history, newest first.
CREATE INDEX publish_requests_by_time ON publish_requests (submitted_at, request_id);

-- Every step of every request: submitted, approval, approved, auto_approved, rejected, withdrawn, expired.
CREATE TABLE publish_reviews
(
    request_id TEXT   NOT NULL,
    version    INTEGER NOT NULL,
    kind       TEXT   NOT NULL,
    actor      TEXT,
    reason     TEXT,
    at         TEXT   NOT NULL,
    PRIMARY KEY (request_id, version)
);

CREATE TABLE trust_rules
(
    rule_id       TEXT   PRIMARY KEY,
    email         TEXT   NOT NULL,
    blueprint_key TEXT,
    description   TEXT,
    granted_by    TEXT   NOT NULL,
    granted_at    TEXT   NOT NULL,
    version       INTEGER NOT NULL
);

CREATE INDEX trust_rules_by_email ON trust_rules (email, blueprint_key);
