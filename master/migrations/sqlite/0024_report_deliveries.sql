-- The reporters' outbox (see the MySQL migration for the columns).
CREATE TABLE report_deliveries (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    reporter TEXT NOT NULL,
    buildid INTEGER NOT NULL,
    phase INTEGER NOT NULL,
    state INTEGER NOT NULL DEFAULT 0,
    topic TEXT NULL,
    status TEXT NULL,
    target TEXT NULL,
    body TEXT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TEXT NOT NULL,
    claimed_by_masterid INTEGER NULL,
    claimed_at TEXT NULL,
    created_at TEXT NOT NULL,
    sent_at TEXT NULL,
    http_status INTEGER NULL,
    last_error TEXT NULL,
    UNIQUE (reporter, buildid, phase)
);
CREATE INDEX report_deliveries_due ON report_deliveries (state, next_attempt_at);
CREATE INDEX report_deliveries_topic ON report_deliveries (topic, state);
CREATE INDEX report_deliveries_build ON report_deliveries (buildid);
