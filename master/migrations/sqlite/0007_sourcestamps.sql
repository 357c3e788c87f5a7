CREATE TABLE sourcestamps (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    branch TEXT NULL,
    revision TEXT NULL,
    repository TEXT NOT NULL,
    project TEXT NOT NULL DEFAULT '',
    codebase TEXT NOT NULL DEFAULT '',
    patch_body BLOB NULL,
    patch_level INTEGER NULL,
    patch_subdir TEXT NULL,
    patch_author TEXT NULL,
    patch_comment TEXT NULL,
    created_at TEXT NOT NULL
);
