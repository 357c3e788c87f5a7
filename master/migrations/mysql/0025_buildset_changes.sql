-- The changes behind a buildset (its provenance). No foreign key to
-- changes: the janitor removes old changes on its own horizon, and a
-- buildset then simply shows fewer of them.
CREATE TABLE buildset_changes (
    buildsetid BIGINT NOT NULL,
    changeid BIGINT NOT NULL,
    PRIMARY KEY (buildsetid, changeid),
    KEY buildset_changes_change (changeid),
    CONSTRAINT buildset_changes_buildset FOREIGN KEY (buildsetid) REFERENCES buildsets (id) ON DELETE CASCADE
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
