-- Read model of the blueprint aggregates (projection "blueprints"): one row per blueprint ever registered, removed
-- ones included (removed = 1). Times are RFC 3339 UTC text with microseconds. `details`, `acl`, `workspace` and `ai`
-- are JSON text; `ai` holds each provider's settings with the key's last four characters, never the sealed key.
CREATE TABLE blueprints
(
    blueprint_key TEXT    PRIMARY KEY,
    display_name  TEXT    NOT NULL,
    description   TEXT,
    details       TEXT    NOT NULL,
    state         TEXT    NOT NULL,
    removed       INTEGER NOT NULL,
    acl           TEXT    NOT NULL,
    workspace     TEXT    NOT NULL,
    ai            TEXT    NOT NULL,
    registered_at TEXT    NOT NULL,
    registered_by TEXT    NOT NULL,
    updated_at    TEXT    NOT NULL,
    updated_by    TEXT    NOT NULL,
    version       INTEGER NOT NULL
);

-- The catalog: listed blueprints (not removed, not disabled).
CREATE INDEX blueprints_listed ON blueprints (removed, state, blueprint_key);
