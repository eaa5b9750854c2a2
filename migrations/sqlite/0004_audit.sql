-- The audit chain (projection "audit_chain"): each event's dense chain index and SHA-256 link, in global order.
-- See docs/AUDIT.md for the encoding.
CREATE TABLE audit_chain
(
    chain_index INTEGER PRIMARY KEY,
    position    INTEGER NOT NULL UNIQUE,
    cursor      TEXT   NOT NULL,
    link        TEXT   NOT NULL
);

-- Signed checkpoints of the chain's head, one line of the export format each. Not projection state: a rebuild of
-- audit_chain never touches them, so they keep vouching for what the chain was when they were signed.
CREATE TABLE audit_checkpoints
(
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    chain_index INTEGER NOT NULL,
    line        TEXT   NOT NULL
);
