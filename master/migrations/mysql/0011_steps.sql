CREATE TABLE steps (
    id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    buildid BIGINT NOT NULL,
    number INT NOT NULL,
    name VARCHAR(191) NOT NULL,
    started_at DATETIME(6) NULL,
    complete_at DATETIME(6) NULL,
    results SMALLINT NULL,
    state_string VARCHAR(255) NOT NULL DEFAULT '',
    UNIQUE KEY steps_number (buildid, number),
    CONSTRAINT steps_build FOREIGN KEY (buildid) REFERENCES builds (id) ON DELETE CASCADE
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
