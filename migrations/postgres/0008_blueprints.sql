-- Read model of the blueprint aggregates (projection "blueprints"): one row per blueprint ever registered, removed
-- ones included (removed = 1). Times are RFC 3339 UTC text with microseconds. `details`, `acl`, `workspace` and `ai`
-- are JSON text; `ai` holds each provider's settings with the key's last four characters, never the sealed key.
CREATE TABLE blueprints
(
    blueprint_key text   PRIMARY KEY,
    display_name  text   NOT NULL,
    description   text,
    details       text   NOT NULL,
    state         text   NOT NULL,
    removed       bigint NOT NULL,
    acl           text   NOT NULL,
    workspace     text   NOT NULL,
    ai            text   NOT NULL,
    registered_at text   NOT NULL,
    registered_by text   NOT NULL,
    updated_at    text   NOT NULL,
    updated_by    text   NOT NULL,
    version       bigint NOT NULL
);

-- The catalog: listed blueprints (not removed, not disabled).
CREATE INDEX blueprints_listed ON blueprints (removed, state, blueprint_key);
