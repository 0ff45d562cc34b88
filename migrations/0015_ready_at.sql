-- When each task last became ready to run, where its queue wait starts (the
-- fleet_task_queue_wait_seconds histogram). Set on insert and, by a trigger, by every
-- statement that moves a task to `ready` or releases a held one (a hold is not queueing),
-- so that no writer has to remember it. NULL for tasks older than this column: readers
-- take created_at then. The default is set apart from ADD COLUMN so that adding the
-- column does not rewrite the table.
ALTER TABLE tasks ADD COLUMN ready_at timestamptz;
ALTER TABLE tasks ALTER COLUMN ready_at SET DEFAULT clock_timestamp();
CREATE FUNCTION fleet_task_ready_at() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.ready_at := clock_timestamp();
    RETURN NEW;
END
$$;
-- The WHEN clause is evaluated without calling the function: other updates pay nothing.
CREATE TRIGGER tasks_ready_at BEFORE UPDATE OF state, held ON tasks FOR EACH ROW
    WHEN ((NEW.state = 'ready' AND OLD.state IS DISTINCT FROM 'ready')
          OR (OLD.held AND NOT NEW.held))
    EXECUTE FUNCTION fleet_task_ready_at();
