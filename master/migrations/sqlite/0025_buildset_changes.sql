-- The changes behind a buildset (its provenance). No foreign key to
-- changes: the janitor removes old changes on its own horizon, and a
-- buildset then simply shows fewer of them.
CREATE TABLE buildset_changes (
    buildsetid INTEGER NOT NULL REFERENCES buildsets (id) ON DELETE CASCADE,
    changeid INTEGER NOT NULL,
    PRIMARY KEY (buildsetid, changeid)
);
CREATE INDEX buildset_changes_change ON buildset_changes (changeid);
