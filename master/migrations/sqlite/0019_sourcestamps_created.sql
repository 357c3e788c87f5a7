-- The janitor removes old source stamps no buildset refers to any more.
CREATE INDEX sourcestamps_created ON sourcestamps (created_at);
