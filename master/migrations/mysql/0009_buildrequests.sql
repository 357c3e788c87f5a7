-- The claim queue. claimed_by_masterid has no foreign key on purpose: a
-- foreign-key check would share-lock the master's row on every claim and
-- contend with its heartbeat. Indexes serve the claim pick (per builder, and
-- across builders), a master's own claims, and expired-lease release.
CREATE TABLE buildrequests (
    id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    buildsetid BIGINT NOT NULL,
    builderid BIGINT NOT NULL,
    priority INT NOT NULL DEFAULT 0,
    complete TINYINT(1) NOT NULL DEFAULT 0,
    results SMALLINT NULL,
    submitted_at DATETIME(6) NOT NULL,
    complete_at DATETIME(6) NULL,
    claimed_by_masterid BIGINT NULL,
    claimed_at DATETIME(6) NULL,
    KEY buildrequests_pick (complete, claimed_by_masterid, builderid, priority DESC, submitted_at, id),
    KEY buildrequests_pick_any (complete, claimed_by_masterid, priority DESC, submitted_at, id),
    KEY buildrequests_claimed (claimed_by_masterid, complete),
    KEY buildrequests_lease (complete, claimed_at),
    KEY buildrequests_buildset (buildsetid, complete),
    KEY buildrequests_builder (builderid, complete),
    CONSTRAINT buildrequests_buildset FOREIGN KEY (buildsetid) REFERENCES buildsets (id) ON DELETE CASCADE,
    CONSTRAINT buildrequests_builder FOREIGN KEY (builderid) REFERENCES builders (id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
