-- Cancelling. A task whose cancel was asked (its job's, or its own) is never tried
-- again: any end of its attempt other than success ends it `cancelled`. Written by the
-- submitter (the cancel), read by every settler.
ALTER TABLE tasks ADD COLUMN cancel_requested_at timestamptz;
-- Open attempts to kill on their executor: the dispatcher sends each holder a cancel
-- (again every few seconds) until the attempt ends.
ALTER TABLE attempts ADD COLUMN cancel_requested bool NOT NULL DEFAULT false;
CREATE INDEX attempts_cancelling ON attempts (task_id, attempt)
    WHERE cancel_requested AND state IN ('assigned', 'running');
