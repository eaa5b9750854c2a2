-- Terminal sessions outlive their browsers (issue #16, ADR 0025): how many browsers are attached now, how many
-- times one attached to an open session (reconnects and second browsers), and since when nobody is attached.

ALTER TABLE terminal_sessions ADD COLUMN attached bigint NOT NULL DEFAULT 0;
ALTER TABLE terminal_sessions ADD COLUMN resumes bigint NOT NULL DEFAULT 0;
ALTER TABLE terminal_sessions ADD COLUMN detached_at text;
