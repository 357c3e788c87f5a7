-- value: JSON text.
CREATE TABLE buildset_properties (
    buildsetid INTEGER NOT NULL REFERENCES buildsets (id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    value TEXT NOT NULL,
    source TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (buildsetid, name)
);
