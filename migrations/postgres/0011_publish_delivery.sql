-- Delivery of approved publish requests (issue #15, ADR 0024): where the commit was pushed, the pull request, the
-- last failure. NULL delivery_status: not delivered (not approved yet, or made before delivery existed).

ALTER TABLE publish_requests ADD COLUMN base_commit text;
ALTER TABLE publish_requests ADD COLUMN patch_truncated bigint NOT NULL DEFAULT 0;
ALTER TABLE publish_requests ADD COLUMN deliver bigint NOT NULL DEFAULT 0;
ALTER TABLE publish_requests ADD COLUMN delivery_status text;
ALTER TABLE publish_requests ADD COLUMN delivery_remote text;
ALTER TABLE publish_requests ADD COLUMN delivery_branch text;
ALTER TABLE publish_requests ADD COLUMN pull_request_url text;
ALTER TABLE publish_requests ADD COLUMN pull_request_number bigint;
ALTER TABLE publish_requests ADD COLUMN failure_stage text;
ALTER TABLE publish_requests ADD COLUMN failure_reason text;
ALTER TABLE publish_requests ADD COLUMN failure_retryable bigint;
ALTER TABLE publish_requests ADD COLUMN failure_at text;
ALTER TABLE publish_requests ADD COLUMN delivery_attempts bigint NOT NULL DEFAULT 0;
