-- tasks.ready_at is set by the statements that move a task to `ready` or release a held
-- one, not by a trigger. A BEFORE ROW UPDATE trigger costs every update of `tasks`, not
-- only those its WHEN clause lets through: PostgreSQL fetches and locks the old row before
-- it evaluates any trigger's WHEN or column list (about 4 us a row when the statement had
-- locked it already, as Fleet's do). The dispatcher and the collector update each task row
-- two or three times per attempt.
DROP TRIGGER tasks_ready_at ON tasks;
DROP FUNCTION fleet_task_ready_at();
