-- Which master runs each scheduler / change source; a lease like request claims.
CREATE TABLE object_owners (
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    masterid INTEGER NOT NULL,
    claimed_at TEXT NOT NULL,
    PRIMARY KEY (kind, name)
);
CREATE INDEX object_owners_master ON object_owners (masterid);
