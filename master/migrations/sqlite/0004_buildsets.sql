-- parent_buildid has no foreign key: builds reference buildsets already.
CREATE TABLE buildsets (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    external_idstring TEXT NULL,
    reason TEXT NOT NULL,
    submitted_at TEXT NOT NULL,
    complete INTEGER NOT NULL DEFAULT 0,
    complete_at TEXT NULL,
    results INTEGER NULL,
    scheduler TEXT NULL,
    parent_buildid INTEGER NULL
);
CREATE INDEX buildsets_complete ON buildsets (complete, submitted_at);
CREATE INDEX buildsets_parent ON buildsets (parent_buildid);
