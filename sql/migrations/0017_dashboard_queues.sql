-- Issue 13, the operators' dashboard (/admin/queues): a job an operator cancels is stored as such, the
-- queues' depth is sampled for its charts, and the dashboard's reads and the history's clean have indexes.

-- A cancelled job is finished: never run again, never re-enqueued by the sweeper (its open_jobs_due reads
-- only queued, retrying, blocked and running jobs), until an operator retries it.
ALTER TABLE jobs DROP CONSTRAINT jobs_status_check;
ALTER TABLE jobs ADD CONSTRAINT jobs_status_check
    CHECK (status IN ('queued', 'running', 'retrying', 'blocked', 'succeeded', 'failed', 'cancelled'));

-- The depth of each queue, one row a minute, written by the workers' heartbeat (the first worker in a
-- minute writes it; the others' inserts conflict). The job rows cannot say what a queue held an hour ago:
-- a retry re-stamps enqueued_at, and a cleaned history is gone. Kept two days.
CREATE TABLE queue_depth_samples (
    queue   text NOT NULL CHECK (queue IN ('payouts', 'chain', 'maintenance')),
    at      timestamptz NOT NULL,   -- the minute sampled
    waiting integer NOT NULL,       -- queued, retrying (and deferred) or blocked: not yet done, not running
    active  integer NOT NULL,       -- running
    PRIMARY KEY (queue, at)
);

-- The rates of the last hour read the attempts that ended in it; the clean reads finished jobs by age.
CREATE INDEX job_attempts_finished_idx ON job_attempts (finished_at) WHERE finished_at IS NOT NULL;
CREATE INDEX jobs_finished_idx ON jobs (finished_at) WHERE finished_at IS NOT NULL;
-- The actions log is read by who and what, newest first.
CREATE INDEX admin_actions_at_idx ON admin_actions (at DESC);
