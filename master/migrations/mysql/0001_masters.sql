-- One row per boot of a master: identity is name + boot_time + nonce.
CREATE TABLE masters (
    id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    name VARCHAR(191) NOT NULL,
    boot_time DATETIME(6) NOT NULL,
    nonce VARCHAR(32) NOT NULL,
    active TINYINT(1) NOT NULL DEFAULT 1,
    draining TINYINT(1) NOT NULL DEFAULT 0,
    last_active DATETIME(6) NOT NULL,
    UNIQUE KEY masters_identity (name, boot_time, nonce),
    KEY masters_active (active, last_active)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
