-- Delivery of approved publish requests (issue #15, ADR 0024): where the commit was pushed, the pull request, the
-- last failure. NULL delivery_status: not delivered (not approved yet, or made before delivery existed).

ALTER TABLE publish_requests ADD COLUMN base_commit TEXT;
ALTER TABLE publish_requests ADD COLUMN patch_truncated INTEGER NOT NULL DEFAULT 0;
ALTER TABLE publish_requests ADD COLUMN deliver INTEGER NOT NULL DEFAULT 0;
ALTER TABLE publish_requests ADD COLUMN delivery_status TEXT;
ALTER TABLE publish_requests ADD COLUMN delivery_remote TEXT;
ALTER TABLE publish_requests ADD COLUMN delivery_branch TEXT;
ALTER TABLE publish_requests ADD COLUMN pull_request_url TEXT;
ALTER TABLE publish_requests ADD COLUMN pull_request_number INTEGER;
ALTER TABLE publish_requests ADD COLUMN failure_stage TEXT;
ALTER TABLE publish_requests ADD COLUMN failure_reason TEXT;
ALTER TABLE publish_requests ADD COLUMN failure_retryable INTEGER;
ALTER TABLE publish_requests ADD COLUMN failure_at TEXT;
ALTER TABLE publish_requests ADD COLUMN delivery_attempts INTEGER NOT NULL DEFAULT 0;
