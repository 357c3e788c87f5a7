CREATE TABLE buildset_sourcestamps (
    buildsetid INTEGER NOT NULL REFERENCES buildsets (id) ON DELETE CASCADE,
    sourcestampid INTEGER NOT NULL REFERENCES sourcestamps (id),
    PRIMARY KEY (buildsetid, sourcestampid)
);
CREATE INDEX buildset_sourcestamps_ss ON buildset_sourcestamps (sourcestampid);
