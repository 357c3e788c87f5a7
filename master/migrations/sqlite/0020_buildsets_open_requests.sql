-- A buildset's written count of open requests and the worst rank of the
-- results its requests completed with (see the MySQL migration).
ALTER TABLE buildsets ADD COLUMN open_requests INTEGER NOT NULL DEFAULT 0;
ALTER TABLE buildsets ADD COLUMN worst_rank INTEGER NOT NULL DEFAULT 0;
