-- Count the open requests of open buildsets, and the worst rank (Results::rank,
-- a request without results counting as Exception) of those already complete.
UPDATE buildsets SET
    open_requests = (SELECT COUNT(*) FROM buildrequests br
                     WHERE br.buildsetid = buildsets.id AND br.complete = 0),
    worst_rank = COALESCE((SELECT MAX(CASE COALESCE(br.results, 4)
                              WHEN 0 THEN 0 WHEN 3 THEN 1 WHEN 1 THEN 2 WHEN 2 THEN 3
                              WHEN 4 THEN 4 WHEN 5 THEN 5 WHEN 6 THEN 6 ELSE 4 END)
                           FROM buildrequests br
                           WHERE br.buildsetid = buildsets.id AND br.complete = 1), 0)
WHERE complete = 0;
