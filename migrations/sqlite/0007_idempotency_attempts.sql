-- An Idempotency-Key answer that survives a crash between the command's commit and its answer (ADR 0018): each claim
-- names its attempt, the answer is stored (`prepared`) before the command commits, and every event the command
-- appends carries the attempt id in its metadata, so a later retry can tell from the log whether it committed.
ALTER TABLE idempotency_keys ADD COLUMN attempt TEXT;

CREATE INDEX events_idempotency_attempt ON events (json_extract(metadata, '$.idempotency_attempt'))
    WHERE json_extract(metadata, '$.idempotency_attempt') IS NOT NULL;
