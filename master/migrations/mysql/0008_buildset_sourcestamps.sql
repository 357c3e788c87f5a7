CREATE TABLE buildset_sourcestamps (
    buildsetid BIGINT NOT NULL,
    sourcestampid BIGINT NOT NULL,
    PRIMARY KEY (buildsetid, sourcestampid),
    KEY buildset_sourcestamps_ss (sourcestampid),
    CONSTRAINT buildset_sourcestamps_buildset FOREIGN KEY (buildsetid) REFERENCES buildsets (id) ON DELETE CASCADE,
    CONSTRAINT buildset_sourcestamps_sourcestamp FOREIGN KEY (sourcestampid) REFERENCES sourcestamps (id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
