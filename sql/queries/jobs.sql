-- name: insert_job
INSERT INTO jobs (id, function, deposit_id, status)
VALUES ($1, $2, $3, 'queued')
ON CONFLICT (id) DO UPDATE
SET status = 'queued', blocked_reason = NULL, failures = 0, first_run_at = NULL, last_error = NULL,
    updated_at = now(), finished_at = NULL
WHERE $4::boolean  -- an operator's retry starts the count of failures again
RETURNING id;

-- name: job_started
UPDATE jobs
SET status = 'running', runs = runs + 1, first_run_at = coalesce(first_run_at, now()), worker_id = $2,
    updated_at = now()
WHERE id = $1
RETURNING *;

-- name: job_succeeded
UPDATE jobs SET status = 'succeeded', finished_at = now(), updated_at = now(), blocked_reason = NULL WHERE id = $1;

-- name: job_failed_once
UPDATE jobs
SET status = 'retrying', failures = failures + 1, last_error = $2,
    next_run_at = now() + make_interval(secs => $3), updated_at = now()
WHERE id = $1
RETURNING failures;

-- name: job_waiting
-- Not a failure: the job waits (for a lock, or for a transaction to be mined) and runs again.
UPDATE jobs
SET status = 'retrying', next_run_at = now() + make_interval(secs => $2), updated_at = now()
WHERE id = $1;

-- name: job_blocked
UPDATE jobs
SET status = 'blocked', blocked_reason = $2, updated_at = now(),
    next_run_at = CASE WHEN $3::float8 IS NULL THEN NULL ELSE now() + make_interval(secs => $3) END
WHERE id = $1;

-- name: job_gave_up
UPDATE jobs SET status = 'failed', last_error = $2, finished_at = now(), updated_at = now() WHERE id = $1;

-- name: running_jobs_by_worker
SELECT worker_id, array_agg(id) AS job_ids FROM jobs WHERE status = 'running' AND worker_id IS NOT NULL
GROUP BY worker_id;

-- name: requeue_jobs_of_dead_worker
UPDATE jobs SET status = 'queued', worker_id = NULL, updated_at = now()
WHERE status = 'running' AND worker_id = $1
RETURNING id;

-- name: open_jobs_due
-- Work recorded in PostgreSQL that should be in the queue now. A 'running' job is
-- included: if Redis holds neither it nor its in-progress key, it died unrecorded.
SELECT * FROM jobs
WHERE (status IN ('queued', 'retrying') AND coalesce(next_run_at, created_at) <= now() - make_interval(secs => $1))
   OR (status = 'blocked' AND next_run_at <= now())
   OR (status = 'running' AND updated_at <= now() - make_interval(secs => $1))
ORDER BY created_at LIMIT $2;

-- name: maintenance_due
-- Claims a maintenance run when the last one is older than the interval; no row back: not due.
INSERT INTO maintenance_runs (name, last_run_at) VALUES ($1, now())
ON CONFLICT (name) DO UPDATE SET last_run_at = now()
WHERE maintenance_runs.last_run_at <= now() - make_interval(secs => $2)
RETURNING last_run_at;
