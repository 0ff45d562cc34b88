-- One active dispatcher per deployment: a lease row with an epoch. The holder renews it
-- every round; a standby takes it once it expires, with the next epoch. Every write of a
-- round first locks this row FOR SHARE for its own holder and epoch (the fence), so a
-- deposed leader's writes match nothing.
CREATE TABLE dispatcher_leader (
    id         int PRIMARY KEY CHECK (id = 1),
    holder     text NOT NULL,
    epoch      bigint NOT NULL,
    expires_at timestamptz NOT NULL
);

-- The leadership epoch that made each assignment.
ALTER TABLE attempts ADD COLUMN epoch bigint;
