-- A builder's written count of claimed, unfinished requests (see the MySQL
-- migration).
ALTER TABLE builders ADD COLUMN claimed_requests INTEGER NOT NULL DEFAULT 0;
