-- Fleet's durable state. Ownership (who writes what) is in docs/design.md.

CREATE TABLE jobs (
    id              uuid PRIMARY KEY,
    name            text,
    -- Same key, same job: the HTTP Idempotency-Key header or the AMQP message_id.
    idempotency_key text UNIQUE,
    state           text NOT NULL DEFAULT 'pending',
    task_count      int  NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
    finished_at     timestamptz
);

CREATE TABLE tasks (
    id            uuid PRIMARY KEY,
    job_id        uuid NOT NULL REFERENCES jobs (id),
    idx           int  NOT NULL,
    name          text NOT NULL,
    -- Arrival order: oldest first within a priority.
    seq           bigserial,
    argv          jsonb NOT NULL,
    env           jsonb NOT NULL DEFAULT '{}',
    cwd           text,
    stdin         text,
    timeout_secs  bigint NOT NULL,
    priority      int  NOT NULL DEFAULT 0,
    target_group  text NOT NULL,
    labels        jsonb NOT NULL DEFAULT '{}',
    -- Indices (idx) of the tasks of the same job this one waits for.
    depends_on    jsonb NOT NULL DEFAULT '[]',
    max_attempts  int  NOT NULL,
    state         text NOT NULL,
    -- Attempts handed out so far; the current attempt's number.
    attempts      int  NOT NULL DEFAULT 0,
    -- The attempt whose outcome decided the task, once it is decided.
    final_attempt int,
    created_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    updated_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    UNIQUE (job_id, idx)
);
CREATE INDEX tasks_ready ON tasks (priority DESC, seq) WHERE state = 'ready';
CREATE INDEX tasks_waiting ON tasks (job_id) WHERE state = 'waiting';

-- One row per attempt, i.e. per assignment of a task to an executor (the lease).
CREATE TABLE attempts (
    task_id        uuid NOT NULL REFERENCES tasks (id),
    attempt        int  NOT NULL,
    executor_id    text NOT NULL,
    -- assigned, running, then the outcome: succeeded, failed, timed_out, spawn_failed,
    -- cancelled, lost.
    state          text NOT NULL,
    assigned_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    started_at     timestamptz,
    finished_at    timestamptz,
    lease_deadline timestamptz NOT NULL,
    PRIMARY KEY (task_id, attempt)
);
CREATE INDEX attempts_open ON attempts (executor_id) WHERE state IN ('assigned', 'running');
CREATE INDEX attempts_lease ON attempts (lease_deadline) WHERE state IN ('assigned', 'running');

-- The dispatcher's record of each executor's last INFO.
CREATE TABLE executors (
    id            text PRIMARY KEY,
    groups        jsonb NOT NULL,
    labels        jsonb NOT NULL,
    capacity      int  NOT NULL,
    running       int  NOT NULL,
    queued        int  NOT NULL,
    draining      bool NOT NULL,
    first_seen_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    last_info_at  timestamptz NOT NULL
);

-- Every result an executor sent, one per (task, attempt), whether or not it counted.
CREATE TABLE results (
    task_id          uuid NOT NULL,
    attempt          int  NOT NULL,
    job_id           uuid NOT NULL,
    executor_id      text NOT NULL,
    outcome          text NOT NULL,
    exit_code        int,
    signal           int,
    error            text,
    stdout           text NOT NULL,
    stderr           text NOT NULL,
    stdout_truncated bool NOT NULL,
    stderr_truncated bool NOT NULL,
    started_at       timestamptz,
    finished_at      timestamptz NOT NULL,
    recorded_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (task_id, attempt)
);
CREATE INDEX results_job ON results (job_id);
