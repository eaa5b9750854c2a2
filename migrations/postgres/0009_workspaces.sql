-- Read model of the workspaces aggregates (projection "workspaces"): one row per workspace ever launched, deleted ones
-- included until the control plane removed them (removed = 1). desired is running, stopped or deleted; the status
-- shown is derived from these columns and from whether the workspace's agent is connected (never stored).
-- started_generation is the generation whose processes run (NULL: none); failure_* describe the current generation's
-- failure. spec is JSON (the blueprint's source as of the launch or last upgrade). Times are RFC 3339 UTC text.
CREATE TABLE workspaces
(
    workspace_id       text PRIMARY KEY,
    owner              text NOT NULL,
    name               text NOT NULL,
    name_folded        text NOT NULL,
    blueprint_key      text NOT NULL,
    project_id         text NOT NULL,
    spec               text NOT NULL,
    desired            text NOT NULL,
    generation         bigint NOT NULL,
    started_generation bigint,
    dev_port           bigint,
    phase              text,
    failure_phase      text,
    failure_reason     text,
    removed            bigint NOT NULL,
    created_at         text NOT NULL,
    created_by         text NOT NULL,
    updated_at         text NOT NULL,
    revision           bigint NOT NULL,
    version            bigint NOT NULL
);

-- Lists are newest first: everyone's (admins) or one owner's.
CREATE INDEX workspaces_by_time ON workspaces (created_at, workspace_id);
CREATE INDEX workspaces_by_owner ON workspaces (owner, created_at, workspace_id);
