-- A buildset's written count of open requests and the worst rank of the
-- results its requests completed with: the completion of a request counts
-- down on the buildset row, and the buildset completes when the count
-- reaches zero. Conflicting completions write the same row, so on Galera
-- certification settles them (no sibling read decides anything).
ALTER TABLE buildsets
    ADD COLUMN open_requests INT NOT NULL DEFAULT 0,
    ADD COLUMN worst_rank SMALLINT NOT NULL DEFAULT 0;
