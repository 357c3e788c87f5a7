-- Generic key/value state of schedulers and change sources; value_json: JSON text.
CREATE TABLE object_state (
    objectname VARCHAR(191) NOT NULL,
    name VARCHAR(191) NOT NULL,
    value_json MEDIUMTEXT NOT NULL,
    PRIMARY KEY (objectname, name)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
