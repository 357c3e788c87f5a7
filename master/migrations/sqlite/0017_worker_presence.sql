-- Where each worker is connected now, so every master can answer
-- /api/v1/workers for the whole cluster: the master it is routed to and
-- that master's (gateway link, session) for it. A row whose master is
-- inactive counts as disconnected.
ALTER TABLE workers ADD COLUMN masterid INTEGER NULL;
ALTER TABLE workers ADD COLUMN master_link INTEGER NULL;
ALTER TABLE workers ADD COLUMN master_session INTEGER NULL;
ALTER TABLE workers ADD COLUMN connected_at TEXT NULL;
