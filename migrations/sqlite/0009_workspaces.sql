-- Read model of the workspaces aggregates (projection "workspaces"): one row per workspace ever launched, deleted ones
-- included until the control plane removed them (removed = 1). desired is running, stopped or deleted; the status
-- shown is derived from these columns and from whether the workspace's agent is connected (never stored).
-- started_generation is the generation whose processes run (NULL: none); failure_* describe the current generation's
-- failure. spec is JSON (the blueprint's source as of the launch or last upgrade). Times are RFC 3339 UTC text.
CREATE TABLE workspaces
(
    workspace_id       TEXT PRIMARY KEY,
    owner              TEXT NOT NULL,
    name               TEXT NOT NULL,
    name_folded        TEXT NOT NULL,
    blueprint_key      TEXT NOT NULL,
    project_id         TEXT NOT NULL,
    spec               TEXT NOT NULL,
    desired            TEXT NOT NULL,
    generation         INTEGER NOT NULL,
    started_generation INTEGER,
    dev_port           INTEGER,
    phase              TEXT,
    failure_phase      TEXT,
    failure_reason     TEXT,
    removed            INTEGER NOT NULL,
    created_at         TEXT NOT NULL,
    created_by         TEXT NOT NULL,
    updated_at         TEXT NOT NULL,
    revision           INTEGER NOT NULL,
    version            INTEGER NOT NULL
);

-- Lists are newest first: everyone's (admins) or one owner's.
CREATE INDEX workspaces_by_time ON workspaces (created_at, workspace_id);
CREATE INDEX workspaces_by_owner ON workspaces (owner, created_at, workspace_id);
