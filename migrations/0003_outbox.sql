-- Messages that must go out if and only if a transaction commits (events for other
-- systems). Written in that transaction; published and deleted by a relay afterwards, so
-- a crash between commit and publish delays a message but never loses it.
CREATE TABLE outbox (
    id          bigserial PRIMARY KEY,
    exchange    text  NOT NULL,
    routing_key text  NOT NULL,
    payload     bytea NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT clock_timestamp()
);
