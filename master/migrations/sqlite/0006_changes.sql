-- files, properties: JSON text.
CREATE TABLE changes (
    changeid INTEGER PRIMARY KEY AUTOINCREMENT,
    author TEXT NOT NULL,
    comments TEXT NOT NULL,
    branch TEXT NULL,
    revision TEXT NULL,
    repository TEXT NOT NULL,
    project TEXT NOT NULL DEFAULT '',
    codebase TEXT NOT NULL DEFAULT '',
    files TEXT NOT NULL,
    properties TEXT NOT NULL,
    when_timestamp TEXT NOT NULL,
    category TEXT NULL,
    created_at TEXT NOT NULL
);
CREATE INDEX changes_branch ON changes (branch);
CREATE INDEX changes_when ON changes (when_timestamp);
