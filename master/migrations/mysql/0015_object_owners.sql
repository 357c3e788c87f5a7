-- Which master runs each scheduler / change source; a lease like request claims.
CREATE TABLE object_owners (
    kind VARCHAR(64) NOT NULL,
    name VARCHAR(191) NOT NULL,
    masterid BIGINT NOT NULL,
    claimed_at DATETIME(6) NOT NULL,
    PRIMARY KEY (kind, name),
    KEY object_owners_master (masterid)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
