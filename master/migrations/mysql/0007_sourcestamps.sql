CREATE TABLE sourcestamps (
    id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    branch VARCHAR(255) NULL,
    revision VARCHAR(255) NULL,
    repository VARCHAR(512) NOT NULL,
    project VARCHAR(255) NOT NULL DEFAULT '',
    codebase VARCHAR(255) NOT NULL DEFAULT '',
    patch_body LONGBLOB NULL,
    patch_level INT NULL,
    patch_subdir VARCHAR(255) NULL,
    patch_author VARCHAR(255) NULL,
    patch_comment MEDIUMTEXT NULL,
    created_at DATETIME(6) NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
