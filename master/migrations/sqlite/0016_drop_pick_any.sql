-- Picks now merge one indexed range per builder; a queue-wide index in
-- priority order only tempted the planner into long scans.
DROP INDEX buildrequests_pick_any;
