-- Held jobs: their tasks not yet handed out are never dispatched until released; tasks
-- already running go on. The flag is on the job (what the API shows) and on each task
-- (what the dispatcher's ready index leaves out). Written by the submitter.
ALTER TABLE jobs ADD COLUMN held bool NOT NULL DEFAULT false;
ALTER TABLE tasks ADD COLUMN held bool NOT NULL DEFAULT false;
DROP INDEX tasks_ready;
CREATE INDEX tasks_ready ON tasks (priority DESC, seq) WHERE state = 'ready' AND NOT held;
DROP INDEX tasks_ready_each;
CREATE INDEX tasks_ready_each ON tasks (priority DESC, seq)
    WHERE state = 'ready' AND each AND NOT held;

-- Dispatching paused for a group and its subgroups (`default`: the whole fleet).
-- Submissions are still accepted. Written by the submitter; read by the dispatcher in the
-- statements that read ready work, so a pause holds from its commit on, whoever leads.
CREATE TABLE scheduler_pauses (
    group_name text PRIMARY KEY,
    paused_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    paused_by  text NOT NULL
);

-- Executors an administrator drained: they get no new work until resumed, whatever
-- their INFO says (a restarted executor stays drained). Written by the submitter; read
-- by the dispatcher with the registrations.
CREATE TABLE executor_drains (
    executor_id text PRIMARY KEY,
    drained_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    drained_by  text NOT NULL
);
