-- Finished jobs by when they finished: the retention purge takes the oldest first, and
-- GET /v1/stats counts those of the last hour, without reading every job.
CREATE INDEX jobs_finished ON jobs (finished_at) WHERE finished_at IS NOT NULL;
-- Held tasks not yet handed out, per target group, for GET /v1/stats. Holding is rare,
-- so the tasks that run never enter it.
CREATE INDEX tasks_held ON tasks (target_group) WHERE held AND state IN ('ready', 'waiting');
