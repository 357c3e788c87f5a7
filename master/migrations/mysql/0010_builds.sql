CREATE TABLE builds (
    id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    number BIGINT NOT NULL,
    builderid BIGINT NOT NULL,
    buildrequestid BIGINT NOT NULL,
    masterid BIGINT NOT NULL,
    workerid BIGINT NULL,
    started_at DATETIME(6) NOT NULL,
    complete_at DATETIME(6) NULL,
    results SMALLINT NULL,
    state_string VARCHAR(255) NOT NULL DEFAULT '',
    UNIQUE KEY builds_number (builderid, number),
    KEY builds_request (buildrequestid),
    KEY builds_master (masterid, complete_at),
    KEY builds_running (complete_at, builderid),
    CONSTRAINT builds_builder FOREIGN KEY (builderid) REFERENCES builders (id),
    CONSTRAINT builds_request FOREIGN KEY (buildrequestid) REFERENCES buildrequests (id) ON DELETE CASCADE
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
