-- Where each worker is connected now, so every master can answer
-- /api/v1/workers for the whole cluster: the master it is routed to and
-- that master's (gateway link, session) for it. A row whose master is
-- inactive counts as disconnected.
ALTER TABLE workers
    ADD COLUMN masterid BIGINT NULL,
    ADD COLUMN master_link BIGINT NULL,
    ADD COLUMN master_session BIGINT NULL,
    ADD COLUMN connected_at DATETIME(6) NULL;
