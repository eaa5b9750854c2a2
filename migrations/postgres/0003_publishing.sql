-- Read models of the publishing and trust rules aggregates (projections "publish_requests" and "trust_rules").
-- Times are RFC 3339 UTC text with microseconds, so they sort as text on both backends.

CREATE TABLE publish_requests
(
    request_id         text   PRIMARY KEY,
    workspace_id       text   NOT NULL,
    blueprint_key      text   NOT NULL,
    subdomain          text   NOT NULL,
    builder            text   NOT NULL,
    commit_id          text   NOT NULL,
    files              bigint NOT NULL,
    insertions         bigint NOT NULL,
    deletions          bigint NOT NULL,
    patch              text,
    message            text   NOT NULL,
    status             text   NOT NULL,
    approvals_required bigint NOT NULL,
    approvals          bigint NOT NULL,
    submitted_at       text   NOT NULL,
    expires_at         text   NOT NULL,
    decided_at         text,
    decided_by         text,
    decision_reason    text,
    trust_rule_id      text,
    updated_at         text   NOT NULL,
    version            bigint NOT NULL
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
    request_id text   NOT NULL,
    version    bigint NOT NULL,
    kind       text   NOT NULL,
    actor      text,
    reason     text,
    at         text   NOT NULL,
    PRIMARY KEY (request_id, version)
);

CREATE TABLE trust_rules
(
    rule_id       text   PRIMARY KEY,
    email         text   NOT NULL,
    blueprint_key text,
    description   text,
    granted_by    text   NOT NULL,
    granted_at    text   NOT NULL,
    version       bigint NOT NULL
);

CREATE INDEX trust_rules_by_email ON trust_rules (email, blueprint_key);
