-- Previews are connection sessions like terminals (issue #16, ADR 0026): the workspace port a preview session
-- showed (NULL for terminals).

ALTER TABLE terminal_sessions ADD COLUMN port INTEGER;
