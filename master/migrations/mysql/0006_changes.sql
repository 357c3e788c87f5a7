-- files, properties: JSON text.
CREATE TABLE changes (
    changeid BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    author VARCHAR(255) NOT NULL,
    comments MEDIUMTEXT NOT NULL,
    branch VARCHAR(255) NULL,
    revision VARCHAR(255) NULL,
    repository VARCHAR(512) NOT NULL,
    project VARCHAR(255) NOT NULL DEFAULT '',
    codebase VARCHAR(255) NOT NULL DEFAULT '',
    files MEDIUMTEXT NOT NULL,
    properties MEDIUMTEXT NOT NULL,
    when_timestamp DATETIME(6) NOT NULL,
    category VARCHAR(255) NULL,
    created_at DATETIME(6) NOT NULL,
    KEY changes_branch (branch(191)),
    KEY changes_when (when_timestamp)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
