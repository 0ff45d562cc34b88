-- Who submitted each job: the API token's id and name. The bootstrap admin token and the
-- AMQP intake have no token row, so no id (their jobs belong to no submitter token).
-- Written by the submitter with the job.
ALTER TABLE jobs ADD COLUMN owner_token uuid;
ALTER TABLE jobs ADD COLUMN owner_name text NOT NULL DEFAULT '';
-- GET /v1/jobs lists newest first by id (v7 ids sort by creation time), as keyset pages:
-- per owner (a submitter token sees its own), and per state.
CREATE INDEX jobs_owner ON jobs (owner_token, id);
CREATE INDEX jobs_state ON jobs (state, id);
