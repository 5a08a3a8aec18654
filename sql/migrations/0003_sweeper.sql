-- The sweeper: which worker runs a job (so a dead worker's jobs are recovered at
-- once), when maintenance last ran, and lost-callback queries.

ALTER TABLE jobs ADD COLUMN worker_id text;
ALTER TABLE deposits ADD COLUMN pushed_at timestamptz;
ALTER TABLE deposits ADD COLUMN last_query_result text;
CREATE INDEX deposits_query_due_idx ON deposits (next_query_at) WHERE status = 'pending';

CREATE TABLE maintenance_runs (
    name        text PRIMARY KEY,
    last_run_at timestamptz NOT NULL
);
