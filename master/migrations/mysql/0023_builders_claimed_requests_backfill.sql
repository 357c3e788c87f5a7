UPDATE builders SET claimed_requests = (SELECT COUNT(*) FROM buildrequests br
    WHERE br.builderid = builders.id AND br.complete = 0
    AND br.claimed_by_masterid IS NOT NULL);
