-- Read model of the user_tags aggregates (projection "tags"): each user's tags, and their assignments to workspaces.
-- An assignment goes when its tag is deleted or its workspace is (WorkspaceDeleteRequested).
CREATE TABLE user_tags
(
    tag_id      text PRIMARY KEY,
    owner       text NOT NULL,
    name        text NOT NULL,
    created_at  text NOT NULL
);

CREATE INDEX user_tags_by_owner ON user_tags (owner, name);

CREATE TABLE workspace_tags
(
    tag_id       text NOT NULL,
    workspace_id text NOT NULL,
    owner        text NOT NULL,
    PRIMARY KEY (tag_id, workspace_id)
);

CREATE INDEX workspace_tags_by_workspace ON workspace_tags (workspace_id);
