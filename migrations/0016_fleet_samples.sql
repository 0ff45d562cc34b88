-- The fleet's figures over time, for the console's charts of queue depth and throughput:
-- every `metrics.history_secs` the collector stores each listed group's figures (the
-- same snapshot as GET /v1/stats, subgroups rolled up), at a time rounded down to the
-- step, so that a second collector or a restart within the step adds nothing twice.
-- Rows older than `metrics.history_hours` are deleted by the same loop. The primary
-- key leads with `at`: the API reads a time range, the purge deletes one.
CREATE TABLE fleet_samples (
    at                  timestamptz NOT NULL,
    group_name          text NOT NULL,
    ready               bigint NOT NULL,
    held                bigint NOT NULL,
    waiting             bigint NOT NULL,
    running             bigint NOT NULL,
    executors_alive     bigint NOT NULL,
    slots_total         bigint NOT NULL,
    slots_free          bigint NOT NULL,
    -- Jobs of the group (or its subgroups) that finished in the minute before `at`.
    jobs_finished_last_minute bigint NOT NULL,
    PRIMARY KEY (at, group_name)
);
