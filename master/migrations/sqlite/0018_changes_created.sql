-- The janitor removes changes by when they were recorded.
CREATE INDEX changes_created ON changes (created_at);
