-- An attempt whose executor reported it finished (its result published, confirmed by the
-- broker) is `reported` until the collector records the result: its slot is free and it
-- is never lost for its executor's silence, only if no result is recorded within
-- dispatcher.result_timeout_secs. The lease sweep reads expired deadlines of every open
-- state through this index.
DROP INDEX attempts_lease;
CREATE INDEX attempts_lease ON attempts (lease_deadline)
    WHERE state IN ('assigned', 'running', 'reported');
