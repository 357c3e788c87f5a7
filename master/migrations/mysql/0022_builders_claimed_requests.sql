-- A builder's written count of claimed, unfinished requests: every claim,
-- release and completion changes it in the same transaction, and the
-- max_concurrent_builds check compares it inside the claiming write.
ALTER TABLE builders ADD COLUMN claimed_requests INT NOT NULL DEFAULT 0;
