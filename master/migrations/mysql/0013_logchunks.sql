CREATE TABLE logchunks (
    logid BIGINT NOT NULL,
    seq BIGINT NOT NULL,
    content LONGBLOB NOT NULL,
    PRIMARY KEY (logid, seq),
    CONSTRAINT logchunks_log FOREIGN KEY (logid) REFERENCES logs (id) ON DELETE CASCADE
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
