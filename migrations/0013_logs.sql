-- Live output: the chunks of each attempt's stdout and stderr, stored once each on
-- (task, attempt, stream, seq); `n` orders both streams of an attempt as written,
-- `byte_offset` is where the chunk starts in its stream. Written by the collector; read
-- by the submitter. Purged with their job.
CREATE TABLE log_chunks (
    task_id     uuid   NOT NULL,
    attempt     int    NOT NULL,
    stream      text   NOT NULL CHECK (stream IN ('stdout', 'stderr')),
    seq         bigint NOT NULL,
    n           bigint NOT NULL,
    byte_offset bigint NOT NULL,
    data        text   NOT NULL,
    truncated   bool   NOT NULL DEFAULT false,
    recorded_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (task_id, attempt, stream, seq)
);
CREATE INDEX log_chunks_order ON log_chunks (task_id, attempt, n);
