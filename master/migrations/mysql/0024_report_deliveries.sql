-- The reporters' outbox: one row per (reporter, build, event), written in
-- the transaction that starts or finishes the build, then prepared (the
-- status to send worked out: topic, path, body), claimed by compare-and-swap
-- on (claimed_by_masterid, claimed_at) like build requests, and sent.
-- state: 0 new, 1 queued, 2 sent, 3 failed (gave up), 4 superseded,
-- 5 skipped (nothing to report on). phase: 0 started, 1 finished.
-- topic: one ordered stream, (reporter, commit, context) for commit
-- statuses, (reporter, build) for http documents.
CREATE TABLE report_deliveries (
    id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    reporter VARCHAR(100) NOT NULL,
    buildid BIGINT NOT NULL,
    phase SMALLINT NOT NULL,
    state SMALLINT NOT NULL DEFAULT 0,
    topic CHAR(64) NULL,
    status VARCHAR(32) NULL,
    target VARCHAR(1024) NULL,
    body MEDIUMTEXT NULL,
    attempts INT NOT NULL DEFAULT 0,
    next_attempt_at DATETIME(6) NOT NULL,
    claimed_by_masterid BIGINT NULL,
    claimed_at DATETIME(6) NULL,
    created_at DATETIME(6) NOT NULL,
    sent_at DATETIME(6) NULL,
    http_status INT NULL,
    last_error VARCHAR(1024) NULL,
    UNIQUE KEY report_deliveries_event (reporter, buildid, phase),
    KEY report_deliveries_due (state, next_attempt_at),
    KEY report_deliveries_topic (topic, state),
    KEY report_deliveries_build (buildid)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
