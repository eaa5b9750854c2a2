-- Responses of POSTs sent with an Idempotency-Key, so a retried request is answered, not executed again.
-- Operational state, not history: rows expire (see api/src/idempotency.rs).
CREATE TABLE idempotency_keys
(
    scope       text    NOT NULL,
    key         text    NOT NULL,
    fingerprint text    NOT NULL,
    state       text    NOT NULL,
    status      bigint,
    response    text,
    location    text,
    created_ms  bigint  NOT NULL,
    PRIMARY KEY (scope, key)
);

CREATE INDEX idempotency_keys_by_age ON idempotency_keys (created_ms);
