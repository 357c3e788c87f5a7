-- The claim queue. claimed_by_masterid has no foreign key (as on MySQL, where
-- the check would lock the master's row). Indexes serve the claim pick (per
-- builder, and across builders), a master's own claims, and lease expiry.
CREATE TABLE buildrequests (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    buildsetid INTEGER NOT NULL REFERENCES buildsets (id) ON DELETE CASCADE,
    builderid INTEGER NOT NULL REFERENCES builders (id),
    priority INTEGER NOT NULL DEFAULT 0,
    complete INTEGER NOT NULL DEFAULT 0,
    results INTEGER NULL,
    submitted_at TEXT NOT NULL,
    complete_at TEXT NULL,
    claimed_by_masterid INTEGER NULL,
    claimed_at TEXT NULL
);
CREATE INDEX buildrequests_pick ON buildrequests (complete, claimed_by_masterid, builderid, priority DESC, submitted_at, id);
CREATE INDEX buildrequests_pick_any ON buildrequests (complete, claimed_by_masterid, priority DESC, submitted_at, id);
CREATE INDEX buildrequests_claimed ON buildrequests (claimed_by_masterid, complete);
CREATE INDEX buildrequests_lease ON buildrequests (complete, claimed_at);
CREATE INDEX buildrequests_buildset ON buildrequests (buildsetid, complete);
CREATE INDEX buildrequests_builder ON buildrequests (builderid, complete);
