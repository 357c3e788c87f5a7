CREATE TABLE builds (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    number INTEGER NOT NULL,
    builderid INTEGER NOT NULL REFERENCES builders (id),
    buildrequestid INTEGER NOT NULL REFERENCES buildrequests (id) ON DELETE CASCADE,
    masterid INTEGER NOT NULL,
    workerid INTEGER NULL,
    started_at TEXT NOT NULL,
    complete_at TEXT NULL,
    results INTEGER NULL,
    state_string TEXT NOT NULL DEFAULT '',
    UNIQUE (builderid, number)
);
CREATE INDEX builds_request ON builds (buildrequestid);
CREATE INDEX builds_master ON builds (masterid, complete_at);
CREATE INDEX builds_running ON builds (complete_at, builderid);
