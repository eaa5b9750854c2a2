-- Responses of POSTs sent with an Idempotency-Key, so a retried request is answered, not executed again.
-- Operational state, not history: rows expire (see api/src/idempotency.rs).
CREATE TABLE idempotency_keys
(
    scope       TEXT    NOT NULL,
    key         TEXT    NOT NULL,
    fingerprint TEXT    NOT NULL,
    state       TEXT    NOT NULL,
    status      INTEGER,
    response    text,
    location    text,
    created_ms  INTEGER  NOT NULL,
    PRIMARY KEY (scope, key)
);

CREATE INDEX idempotency_keys_by_age ON idempotency_keys (created_ms);
