-- Job history that explains itself: every job names its queue (and its deposit or intent), every
-- attempt is a row (start, end, duration, outcome, error with traceback), and the job keeps its own
-- log lines (info and above, the last 200) and, for long work, its progress.

ALTER TABLE jobs
    ADD COLUMN queue text NOT NULL DEFAULT 'payouts' CHECK (queue IN ('payouts', 'chain', 'maintenance')),
    ADD COLUMN intent_id uuid REFERENCES deposit_intents (id),
    ADD COLUMN enqueued_at timestamptz,
    ADD COLUMN started_at timestamptz,   -- the latest attempt's start
    -- The latest attempt's outcome: it tells a job that waits (deferred) from one that failed (retrying).
    ADD COLUMN last_outcome text,
    ADD COLUMN progress jsonb,           -- e.g. a scan round's blocks done of total
    ADD COLUMN logs jsonb NOT NULL DEFAULT '[]';  -- the job's own log lines, the newest 200
UPDATE jobs SET enqueued_at = created_at;
ALTER TABLE jobs ALTER COLUMN enqueued_at SET DEFAULT now(), ALTER COLUMN enqueued_at SET NOT NULL;
CREATE INDEX jobs_newest_idx ON jobs (enqueued_at DESC);

CREATE TABLE job_attempts (
    job_id      text NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    attempt     integer NOT NULL,   -- the job's run number (jobs.runs when it started)
    worker_id   text,
    started_at  timestamptz NOT NULL,
    finished_at timestamptz,        -- NULL while running, or when its worker died (then 'interrupted' at the next start)
    duration    interval GENERATED ALWAYS AS (finished_at - started_at) STORED,
    outcome     text CHECK (outcome IN ('succeeded', 'failed', 'deferred', 'blocked', 'interrupted')),
    error       text,               -- the error and, where the job raised, its traceback
    PRIMARY KEY (job_id, attempt)
);

-- The job's log lines with `new` appended, only the newest 200 kept.
CREATE FUNCTION job_logs_append(old jsonb, new jsonb) RETURNS jsonb
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN new IS NULL OR jsonb_array_length(new) = 0 THEN old
    ELSE (SELECT coalesce(jsonb_agg(line ORDER BY n), '[]'::jsonb)
          FROM (SELECT line, n FROM jsonb_array_elements(old || new) WITH ORDINALITY AS t (line, n)
                ORDER BY n DESC LIMIT 200) AS kept)
    END
$$;
