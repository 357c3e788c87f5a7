-- value: JSON text.
CREATE TABLE buildset_properties (
    buildsetid BIGINT NOT NULL,
    name VARCHAR(191) NOT NULL,
    value MEDIUMTEXT NOT NULL,
    source VARCHAR(191) NOT NULL DEFAULT '',
    PRIMARY KEY (buildsetid, name),
    CONSTRAINT buildset_properties_buildset FOREIGN KEY (buildsetid) REFERENCES buildsets (id) ON DELETE CASCADE
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
