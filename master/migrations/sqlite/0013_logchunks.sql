CREATE TABLE logchunks (
    logid INTEGER NOT NULL REFERENCES logs (id) ON DELETE CASCADE,
    seq INTEGER NOT NULL,
    content BLOB NOT NULL,
    PRIMARY KEY (logid, seq)
);
