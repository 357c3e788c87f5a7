-- parent_buildid has no foreign key: builds reference buildsets already.
CREATE TABLE buildsets (
    id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    external_idstring VARCHAR(255) NULL,
    reason VARCHAR(1024) NOT NULL,
    submitted_at DATETIME(6) NOT NULL,
    complete TINYINT(1) NOT NULL DEFAULT 0,
    complete_at DATETIME(6) NULL,
    results SMALLINT NULL,
    scheduler VARCHAR(191) NULL,
    parent_buildid BIGINT NULL,
    KEY buildsets_complete (complete, submitted_at),
    KEY buildsets_parent (parent_buildid)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
