-- Run on every member (`each`): a task fans out into one copy per member executor known
-- when it becomes ready; `quorum` successes (NULL: all members) decide it.
ALTER TABLE tasks ADD COLUMN each bool NOT NULL DEFAULT false;
ALTER TABLE tasks ADD COLUMN quorum int;
-- The dispatcher fans ready `each` tasks out apart from the others.
CREATE INDEX tasks_ready_each ON tasks (priority DESC, seq) WHERE state = 'ready' AND each;

-- One row per member of an `each` task. Written by the dispatcher (fan-out, pending ->
-- assigned) and by settle() (the collector and the lease sweep: how each copy ended).
CREATE TABLE task_copies (
    task_id         uuid NOT NULL REFERENCES tasks (id),
    executor_id     text NOT NULL,
    -- pending (waiting for its executor), assigned (an attempt is open), succeeded,
    -- failed, cancelled (the task was decided before this copy started).
    state           text NOT NULL,
    -- Attempts this member used; at most the task's max_attempts.
    attempts        int  NOT NULL DEFAULT 0,
    -- The task-wide number of this copy's latest attempt.
    current_attempt int,
    -- Since when it has waited for its executor (the grace period runs from here, or
    -- from the executor's last INFO if later).
    pending_since   timestamptz,
    error           text,
    PRIMARY KEY (task_id, executor_id)
);
CREATE INDEX task_copies_pending ON task_copies (task_id) WHERE state = 'pending';
