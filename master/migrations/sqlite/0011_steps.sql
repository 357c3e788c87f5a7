CREATE TABLE steps (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    buildid INTEGER NOT NULL REFERENCES builds (id) ON DELETE CASCADE,
    number INTEGER NOT NULL,
    name TEXT NOT NULL,
    started_at TEXT NULL,
    complete_at TEXT NULL,
    results INTEGER NULL,
    state_string TEXT NOT NULL DEFAULT '',
    UNIQUE (buildid, number)
);
