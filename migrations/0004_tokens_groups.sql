-- API tokens: only a SHA-256 of each token is kept. Written by the submitter.
CREATE TABLE api_tokens (
    id            uuid PRIMARY KEY,
    name          text NOT NULL,
    role          text NOT NULL CHECK (role IN ('admin', 'submitter', 'reader')),
    secret_sha256 bytea NOT NULL UNIQUE,
    created_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    revoked_at    timestamptz
);

-- Groups as data. Groups nest by their dotted names (`site.web` is inside `site`), so a
-- cycle cannot be written; a group is created after its parent. Written by the submitter.
CREATE TABLE groups (
    name        text PRIMARY KEY,
    description text,
    created_at  timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- Executors an administrator put in a group, on top of the groups an executor declares
-- itself (its configuration, reported in INFO). Written by the submitter; read by the
-- dispatcher for eligibility.
CREATE TABLE group_members (
    group_name  text NOT NULL REFERENCES groups (name),
    executor_id text NOT NULL,
    added_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (group_name, executor_id)
);
CREATE INDEX group_members_executor ON group_members (executor_id);
