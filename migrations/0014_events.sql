-- The event log: what Fleet announces, kept (retention.finished_job_days) so that a reader
-- can resume where it stopped. Written in the transaction of the change it announces
-- (narrow rows: the details — names, exit code, duration — are joined in when read).
-- Read in (xid, id) order and only below the oldest running transaction id, so a
-- reader never passes an event that a slower transaction is about to commit: see
-- docs/design.md, "The event log".
CREATE TABLE events (
    id          bigserial   PRIMARY KEY,
    xid         xid8        NOT NULL DEFAULT pg_current_xact_id(),
    at          timestamptz NOT NULL DEFAULT clock_timestamp(),
    kind        text        NOT NULL,
    job_id      uuid,
    task_id     uuid,
    attempt     int,
    executor_id text,
    -- The new state (task, job) or the attempt's outcome (task.retrying).
    state       text,
    retry_at    timestamptz
);
CREATE INDEX events_order ON events (xid, id);
CREATE INDEX events_job ON events (job_id, xid, id) WHERE job_id IS NOT NULL;

-- Where each reader of the log that must see every event once (the AMQP relay, the
-- webhook fan-out) has got to.
CREATE TABLE event_cursors (
    name text PRIMARY KEY,
    xid  xid8   NOT NULL,
    id   bigint NOT NULL
);

-- Webhooks: fleet-wide ones an admin registered (job_id NULL), and one per job that
-- named `notify`. `kinds` empty: every kind. `group_name`: only events of tasks of that
-- group or its subgroups (and of jobs with such a task).
CREATE TABLE webhooks (
    id                uuid PRIMARY KEY,
    url               text NOT NULL,
    secret            text NOT NULL,
    kinds             text[] NOT NULL DEFAULT '{}',
    group_name        text,
    job_id            uuid,
    created_by        text NOT NULL DEFAULT '',
    created_at        timestamptz NOT NULL DEFAULT clock_timestamp(),
    last_delivered_at timestamptz,
    last_error        text,
    last_error_at     timestamptz
);
CREATE INDEX webhooks_job ON webhooks (job_id) WHERE job_id IS NOT NULL;
CREATE INDEX webhooks_fleet ON webhooks (created_at) WHERE job_id IS NULL;

-- The durable delivery queue: one row per (webhook, event) until delivered (then
-- deleted) or given up (state 'dead', kept for the operator).
CREATE TABLE webhook_deliveries (
    id          bigserial PRIMARY KEY,
    webhook_id  uuid   NOT NULL REFERENCES webhooks (id) ON DELETE CASCADE,
    event_id    bigint NOT NULL,
    state       text   NOT NULL DEFAULT 'pending',
    tries       int    NOT NULL DEFAULT 0,
    next_at     timestamptz NOT NULL DEFAULT clock_timestamp(),
    lease_until timestamptz,
    last_error  text,
    UNIQUE (webhook_id, event_id)
);
-- A webhook's pending deliveries in the order they fall due (the claim walks the webhooks
-- that have any, one index probe each, then takes each one's due ones from here).
CREATE INDEX webhook_deliveries_pending ON webhook_deliveries (webhook_id, next_at, id)
    WHERE state = 'pending';
-- The deliveries in flight (leased), to cap what one receiver holds at once.
CREATE INDEX webhook_deliveries_leased ON webhook_deliveries (webhook_id)
    WHERE state = 'pending' AND lease_until IS NOT NULL;

-- When the dispatcher announced an executor lost (no INFO within the timeout); cleared
-- by its next INFO, which announces it joined again.
ALTER TABLE executors ADD COLUMN lost_at timestamptz;

-- Events go to the broker from the event log now.
DROP TABLE outbox;
