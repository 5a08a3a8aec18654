-- name: insert_job
INSERT INTO jobs (id, function, deposit_id, status)
VALUES ($1, $2, $3, 'queued')
ON CONFLICT (id) DO UPDATE
SET status = 'queued', blocked_reason = NULL, failures = 0, first_run_at = NULL, last_error = NULL,
    updated_at = now(), finished_at = NULL, enqueued_at = now()
WHERE $4::boolean  -- an operator's retry starts the count of failures again
RETURNING id;

-- name: job_started
-- One more run, and its attempt row; an attempt left open (its worker died) is closed as interrupted.
WITH job AS (
    UPDATE jobs
    SET status = 'running', runs = runs + 1, first_run_at = coalesce(first_run_at, now()), started_at = now(),
        worker_id = $2, updated_at = now()
    WHERE id = $1 AND status <> 'cancelled'  -- an operator cancelled it: a run that raced the cancel changes nothing
    RETURNING *
), interrupted AS (
    UPDATE job_attempts a SET finished_at = now(), outcome = 'interrupted'
    FROM job WHERE a.job_id = job.id AND a.finished_at IS NULL
), attempt AS (
    INSERT INTO job_attempts (job_id, attempt, worker_id, started_at)
    SELECT id, runs, worker_id, started_at FROM job
)
SELECT * FROM job;

-- Each end of a run below also closes the run's attempt (its outcome, and $N the error with its
-- traceback) and appends the run's log lines ($N, a jsonb array or NULL), in the same statement.

-- name: job_succeeded
-- Only a job still running: one queued again during the run (an operator's retry, whose enqueue arq refused while
-- the run held the job id) keeps 'queued', and the run says so (`queued_again`), so that it runs again; a
-- cancelled one stays cancelled. Its attempt is then closed as interrupted by its next start.
WITH job AS (
    UPDATE jobs
    SET status = 'succeeded', finished_at = now(), updated_at = now(), blocked_reason = NULL,
        last_outcome = 'succeeded', logs = job_logs_append(logs, $2), progress = coalesce($3, progress)
    WHERE id = $1 AND status = 'running'
    RETURNING id, runs
), ended AS (
    UPDATE job_attempts a SET finished_at = now(), outcome = 'succeeded'
    FROM job WHERE a.job_id = job.id AND a.attempt = job.runs AND a.finished_at IS NULL
)
SELECT NOT EXISTS (SELECT 1 FROM job) AND (SELECT status FROM jobs WHERE id = $1) = 'queued' AS queued_again;

-- name: jobs_open_of_paid
-- Of these deposit jobs, those waiting for a later run (their last attempt ended) whose deposits are completed. A
-- queued one is left to run: it may hold an attempt a dead worker left open, which only its next start closes.
SELECT j.id FROM jobs j JOIN deposits d ON d.id = j.deposit_id
WHERE j.id = ANY($1::text[]) AND j.status = 'retrying' AND d.status = 'completed';

-- name: jobs_paid_meanwhile
-- Deposit jobs a lane owner took off arq's queue (kiota/job_history.py `finish_paid_jobs`), their deposits paid in
-- its turn: they succeed now, with a line saying so; the run they waited for never comes. Only those still waiting
-- for it, of completed deposits; a row another statement holds is left as it is.
WITH paid AS (
    SELECT j.id FROM jobs j JOIN deposits d ON d.id = j.deposit_id
    WHERE j.id = ANY($1::text[]) AND j.status = 'retrying' AND d.status = 'completed'
    ORDER BY j.id FOR UPDATE OF j SKIP LOCKED
), done AS (
    UPDATE jobs j
    SET status = 'succeeded', finished_at = now(), updated_at = now(), next_run_at = NULL, blocked_reason = NULL,
        last_outcome = 'succeeded', logs = job_logs_append(j.logs, $2)
    FROM paid WHERE j.id = paid.id
    RETURNING j.id
)
SELECT count(*) FROM done;

-- name: job_failed_once
WITH job AS (
    UPDATE jobs
    SET status = 'retrying', failures = failures + 1, last_error = $2,
        next_run_at = now() + make_interval(secs => $3), updated_at = now(),
        last_outcome = 'failed', logs = job_logs_append(logs, $5)
    WHERE id = $1 AND status <> 'cancelled'
    RETURNING id, runs, failures
), ended AS (
    UPDATE job_attempts a SET finished_at = now(), outcome = 'failed', error = $4
    FROM job WHERE a.job_id = job.id AND a.attempt = job.runs AND a.finished_at IS NULL
)
SELECT failures FROM job;

-- name: job_waiting
-- Not a failure: the job waits (for a lock, or for a transaction to be mined) and runs again.
WITH job AS (
    UPDATE jobs
    SET status = 'retrying', next_run_at = now() + make_interval(secs => $2), updated_at = now(),
        last_outcome = 'deferred', logs = job_logs_append(logs, $3)
    WHERE id = $1 AND status <> 'cancelled'
    RETURNING id, runs
)
UPDATE job_attempts a SET finished_at = now(), outcome = 'deferred'
FROM job WHERE a.job_id = job.id AND a.attempt = job.runs AND a.finished_at IS NULL;

-- name: job_blocked
WITH job AS (
    UPDATE jobs
    SET status = 'blocked', blocked_reason = $2, updated_at = now(),
        next_run_at = CASE WHEN $3::float8 IS NULL THEN NULL ELSE now() + make_interval(secs => $3) END,
        last_outcome = 'blocked', logs = job_logs_append(logs, $4)
    WHERE id = $1 AND status <> 'cancelled'
    RETURNING id, runs
)
UPDATE job_attempts a SET finished_at = now(), outcome = 'blocked', error = $2
FROM job WHERE a.job_id = job.id AND a.attempt = job.runs AND a.finished_at IS NULL;

-- name: job_gave_up
WITH job AS (
    UPDATE jobs
    SET status = 'failed', last_error = $2, finished_at = now(), updated_at = now(),
        last_outcome = 'failed', logs = job_logs_append(logs, $4)
    WHERE id = $1 AND status <> 'cancelled'
    RETURNING id, runs
)
UPDATE job_attempts a SET finished_at = now(), outcome = 'failed', error = $3
FROM job WHERE a.job_id = job.id AND a.attempt = job.runs AND a.finished_at IS NULL;

-- name: record_tick
-- A cron tick that did real work, recorded once it ended: its job row and its one attempt. A tick's
-- id is its time, so a tick is recorded at most once.
WITH job AS (
    INSERT INTO jobs (id, function, queue, status, runs, failures, last_error, first_run_at, started_at,
                      enqueued_at, finished_at, worker_id, last_outcome, progress, logs)
    VALUES ($1, $2, $3, CASE WHEN $6::text IS NULL THEN 'succeeded' ELSE 'failed' END, 1,
            CASE WHEN $6::text IS NULL THEN 0 ELSE 1 END, left($6, 2000), $5, $5, $5, now(), $4,
            CASE WHEN $6::text IS NULL THEN 'succeeded' ELSE 'failed' END, $7, job_logs_append('[]', $8))
    ON CONFLICT (id) DO NOTHING
    RETURNING id, worker_id, started_at, finished_at, last_outcome
)
INSERT INTO job_attempts (job_id, attempt, worker_id, started_at, finished_at, outcome, error)
SELECT id, 1, worker_id, started_at, finished_at, last_outcome, $6 FROM job;

-- name: job_by_id
SELECT * FROM jobs WHERE id = $1;

-- name: attempts_of_jobs
SELECT * FROM job_attempts WHERE job_id = ANY($1::text[]) ORDER BY job_id, attempt;

-- name: find_jobs
-- Newest first. $1: a stored status; $2: true for the latest attempt deferred, false for not, NULL either;
-- $6: a queue; $7/$8: enqueued at or after / before; $9: a substring of the job id or of its deposit id.
SELECT * FROM jobs
WHERE ($1::text IS NULL OR status = $1)
  AND ($2::boolean IS NULL OR (last_outcome IS NOT DISTINCT FROM 'deferred') = $2)
  AND ($3::text IS NULL OR function = $3)
  AND ($4::uuid IS NULL OR deposit_id = $4)
  AND ($5::uuid IS NULL OR intent_id = $5)
  AND ($6::text IS NULL OR queue = $6)
  AND ($7::timestamptz IS NULL OR enqueued_at >= $7)
  AND ($8::timestamptz IS NULL OR enqueued_at < $8)
  AND ($9::text IS NULL OR strpos(id, $9) > 0 OR strpos(coalesce(deposit_id::text, ''), $9) > 0)
ORDER BY enqueued_at DESC, id DESC
LIMIT $10 OFFSET $11;

-- name: existing_jobs
SELECT id FROM jobs WHERE id = ANY($1::text[]);

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

-- The dashboard's reads and an operator's actions (kiota/queue_stats.py, kiota/job_actions.py)

-- name: job_counts
-- Jobs by queue, stored status and whether the latest attempt was deferred (kiota/job_view.py shows them).
SELECT queue, status, (last_outcome IS NOT DISTINCT FROM 'deferred') AS deferred, count(*) AS n
FROM jobs GROUP BY 1, 2, 3;

-- name: attempt_minutes
-- Attempts that ended since $1, by queue and minute: how many, and how many failed.
SELECT j.queue, date_trunc('minute', a.finished_at) AS minute, count(*) AS ended,
       count(*) FILTER (WHERE a.outcome = 'failed') AS failed
FROM job_attempts a JOIN jobs j ON j.id = a.job_id
WHERE a.finished_at >= $1
GROUP BY 1, 2;

-- name: record_depth_sample
-- This minute's depth of every queue, once (the first heartbeat of the minute writes it); samples older
-- than two days go in the same statement.
WITH pruned AS (
    DELETE FROM queue_depth_samples WHERE at < now() - interval '2 days'
)
INSERT INTO queue_depth_samples (queue, at, waiting, active)
SELECT q.queue, date_trunc('minute', now()),
       count(j.id) FILTER (WHERE j.status IN ('queued', 'retrying', 'blocked')),
       count(j.id) FILTER (WHERE j.status = 'running')
FROM unnest($1::text[]) AS q (queue)
LEFT JOIN jobs j ON j.queue = q.queue AND j.status IN ('queued', 'retrying', 'blocked', 'running')
GROUP BY q.queue
ON CONFLICT (queue, at) DO NOTHING;

-- name: depth_samples
SELECT * FROM queue_depth_samples WHERE at >= $1 ORDER BY queue, at;

-- name: job_for_update
SELECT * FROM jobs WHERE id = $1 FOR UPDATE;

-- name: cancel_job
-- Only a job waiting to run (queued, retrying or blocked) is cancelled; nothing back: it was not waiting.
UPDATE jobs
SET status = 'cancelled', finished_at = now(), updated_at = now(), next_run_at = NULL, last_error = $2
WHERE id = $1 AND status IN ('queued', 'retrying', 'blocked')
RETURNING *;

-- name: count_old_history
-- How many finished jobs ended more than $1 days ago: what a clean will delete.
SELECT count(*) FROM jobs
WHERE status IN ('succeeded', 'failed', 'cancelled') AND finished_at < now() - make_interval(days => $1);

-- name: clean_history
-- Up to $2 finished jobs (succeeded, failed, cancelled) that ended more than $1 days ago, oldest first, and
-- their attempts: how many of each. Nothing else: the ledger, callbacks, payouts, deposits and admin_actions
-- are not the history's.
WITH old AS (
    SELECT id FROM jobs
    WHERE status IN ('succeeded', 'failed', 'cancelled') AND finished_at < now() - make_interval(days => $1)
    ORDER BY finished_at
    LIMIT $2
    FOR UPDATE SKIP LOCKED
), attempts AS (
    DELETE FROM job_attempts WHERE job_id IN (SELECT id FROM old) RETURNING 1
), gone AS (
    DELETE FROM jobs WHERE id IN (SELECT id FROM old) RETURNING 1
)
SELECT (SELECT count(*) FROM gone) AS jobs, (SELECT count(*) FROM attempts) AS attempts;
