-- Executor identity. A join token (only its SHA-256 kept) lets one executor register
-- once; registration gives it a broker user of its own. Written by the submitter; the
-- dispatcher reads revocations (a revoked executor's attempts are lost at once).
CREATE TABLE join_tokens (
    id            uuid PRIMARY KEY,
    secret_sha256 bytea NOT NULL UNIQUE,
    -- Groups the executor may declare (empty: any).
    groups        jsonb NOT NULL DEFAULT '[]',
    created_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    expires_at    timestamptz NOT NULL,
    used_at       timestamptz,
    used_by       text
);

CREATE TABLE executor_credentials (
    executor_id   text PRIMARY KEY,
    broker_user   text NOT NULL,
    groups        jsonb NOT NULL,
    registered_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    revoked_at    timestamptz
);
