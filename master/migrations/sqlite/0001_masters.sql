-- One row per boot of a master: identity is name + boot_time + nonce.
-- Times are UTC text 'YYYY-MM-DD HH:MM:SS.SSS' (sortable).
CREATE TABLE masters (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    boot_time TEXT NOT NULL,
    nonce TEXT NOT NULL,
    active INTEGER NOT NULL DEFAULT 1,
    draining INTEGER NOT NULL DEFAULT 0,
    last_active TEXT NOT NULL,
    UNIQUE (name, boot_time, nonce)
);
CREATE INDEX masters_active ON masters (active, last_active);
