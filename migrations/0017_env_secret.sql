-- Secret environment values, sealed by the submitter with `secrets.key`
-- (XChaCha20-Poly1305, the task's id as associated data: shared/src/secrets.rs) and
-- opened by the dispatcher when it builds a request. NULL: the task has none. `env`
-- never holds them. Their names are not secret and are kept apart, in clear, for the
-- API (`env_secret_names`, a JSON array; NULL: none).
ALTER TABLE tasks ADD COLUMN env_secret bytea, ADD COLUMN env_secret_names jsonb;
