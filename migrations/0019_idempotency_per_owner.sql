-- An idempotency key is the submitter's own: unique per owner (the API token that
-- submitted the job; jobs without one, the bootstrap admin's and the AMQP intake's under
-- `submitter.amqp_auth = broker`, share one scope of their own), no longer across the
-- fleet. A global key let one submitter take a key another would use ("nightly-<date>"):
-- the other's submission was then answered with the first one's job, and its own never
-- ran; and a repeat answered a stranger's job id.
--
-- insert_jobs' ON CONFLICT DO NOTHING (no conflict target) is answered by this index,
-- and its lookup of the jobs not inserted matches the same expression, so keep the
-- two in step.
--
-- Cost on a big jobs table: CREATE UNIQUE INDEX reads the whole table under a SHARE lock
-- (reads go on, submissions and state changes of jobs wait until the migration commits),
-- 2.2 s for a million jobs (half of them keyed) on a developer machine; CONCURRENTLY
-- cannot run in the migrations' transaction.
-- Fine at this stage (the table holds at most retention.finished_job_days of history);
-- the build cannot fail, since keys were unique fleet-wide until now. The old constraint
-- is dropped after the build, so the ACCESS EXCLUSIVE lock it takes is held only from
-- there to the commit.
-- The services' statement_timeout (30 s) would cut the build short on a table of
-- millions; this transaction's statements may take as long as they take.
SET LOCAL statement_timeout = 0;
CREATE UNIQUE INDEX jobs_idempotency_per_owner
    ON jobs (COALESCE(owner_token, '00000000-0000-0000-0000-000000000000'::uuid),
             idempotency_key)
    WHERE idempotency_key IS NOT NULL;

-- The global constraint of 0001 (`idempotency_key text UNIQUE`), whatever its name
-- (PostgreSQL's default is jobs_idempotency_key_key): any unique constraint on that
-- column alone.
DO $$
DECLARE
    c name;
BEGIN
    FOR c IN
        SELECT con.conname
        FROM pg_constraint con
        JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = con.conkey[1]
        WHERE con.conrelid = 'jobs'::regclass
          AND con.contype = 'u'
          AND cardinality(con.conkey) = 1
          AND a.attname = 'idempotency_key'
    LOOP
        EXECUTE format('ALTER TABLE jobs DROP CONSTRAINT %I', c);
    END LOOP;
END
$$;
