-- Retry policies. `retry`: the task's policy (which failures are tried again, the
-- backoff), NULL for none. A task whose attempt failed in a way it retries waits in
-- state `retrying` until `retry_at`; the dispatcher then makes it ready. Written by the
-- submitter (`retry`), by settlers (`retry_at`), and by the dispatcher (`retrying ->
-- ready`).
ALTER TABLE tasks ADD COLUMN retry jsonb;
ALTER TABLE tasks ADD COLUMN retry_at timestamptz;
CREATE INDEX tasks_retrying ON tasks (retry_at) WHERE state = 'retrying';
-- A manual rerun starts a task's attempt budget again: attempts up to this number
-- belong to earlier runs (their rows are kept; numbering goes on).
ALTER TABLE tasks ADD COLUMN attempt_base int NOT NULL DEFAULT 0;
