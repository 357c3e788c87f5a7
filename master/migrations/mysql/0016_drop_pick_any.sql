-- Picks now merge one indexed range per builder; a queue-wide index in
-- priority order only tempted the optimiser into long scans.
ALTER TABLE buildrequests DROP INDEX buildrequests_pick_any;
