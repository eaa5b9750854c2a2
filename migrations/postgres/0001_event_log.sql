-- The event log. postgres-es writes the first seven columns; the rest have defaults that give every event a
-- global order that a reader can follow without skipping late commits (see store/src/postgres.rs).
CREATE TABLE events
(
    aggregate_type text                         NOT NULL,
    aggregate_id   text                         NOT NULL,
    sequence       bigint CHECK (sequence >= 1) NOT NULL,
    event_type     text                         NOT NULL,
    event_version  text                         NOT NULL,
    payload        jsonb                        NOT NULL,
    metadata       jsonb                        NOT NULL,
    -- Unique, assigned at insert; visible only at commit, so it alone is not a safe reading order.
    position       bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
    -- The writing transaction's id. Every event below pg_snapshot_xmin(pg_current_snapshot()) is settled.
    txid           xid8        NOT NULL DEFAULT pg_current_xact_id(),
    recorded_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (aggregate_type, aggregate_id, sequence)
);

CREATE INDEX events_global_order ON events (txid, position);

-- Never used (cqrs-es snapshots apply events twice on 0.5.0), but postgres-es expects the table to exist.
CREATE TABLE snapshots
(
    aggregate_type   text   NOT NULL,
    aggregate_id     text   NOT NULL,
    last_sequence    bigint NOT NULL,
    current_snapshot bigint NOT NULL,
    payload          jsonb  NOT NULL,
    PRIMARY KEY (aggregate_type, aggregate_id, last_sequence)
);

-- The event log is append-only: refuse UPDATE and DELETE at the database, whoever asks.
CREATE FUNCTION events_append_only() RETURNS trigger LANGUAGE plpgsql AS
$$
BEGIN
    RAISE EXCEPTION 'the event log is append-only' USING ERRCODE = 'GH001';
END
$$;

CREATE TRIGGER events_append_only
    BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION events_append_only();

-- Row triggers do not see TRUNCATE.
CREATE TRIGGER events_no_truncate
    BEFORE TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION events_append_only();

-- One row per projection: where it stands in the global log, and why it stopped if it did.
CREATE TABLE projection_checkpoints
(
    name           text        PRIMARY KEY,
    cursor         text        NOT NULL,
    events_applied bigint      NOT NULL DEFAULT 0,
    updated_at     timestamptz NOT NULL DEFAULT now(),
    failed_cursor  text,
    last_error     text
);

-- Read model of the roster projection.
CREATE TABLE members
(
    email      text   PRIMARY KEY,
    role       text   NOT NULL,
    status     text   NOT NULL,
    invited_by text,
    invited_at text   NOT NULL,
    updated_at text   NOT NULL,
    version    bigint NOT NULL
);

CREATE INDEX members_by_role ON members (role);
