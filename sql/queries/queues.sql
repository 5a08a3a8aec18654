-- Named queues: whether each is paused (kiota/queues.py), and the counts GET /api/v1/admin/stats shows.
-- Owned by kiota/store/queues.py.

-- name: queue_states
SELECT * FROM queue_states ORDER BY queue;

-- name: queue_state_for_update
SELECT * FROM queue_states WHERE queue = $1 FOR UPDATE;

-- name: queue_set_paused
-- queue, paused, who
UPDATE queue_states SET paused = $2, changed_by = $3, changed_at = now() WHERE queue = $1 RETURNING *;

-- name: job_counts_by_queue
-- The job history by queue and stored status; a retrying job that only waits (its last attempt deferred)
-- counted apart (kiota/job_view.py's mapping).
SELECT queue, status, coalesce(status = 'retrying' AND last_outcome = 'deferred', false) AS deferred, count(*) AS n
FROM jobs
GROUP BY 1, 2, 3;

-- name: deposit_counts_by_status
SELECT status, count(*) AS n FROM deposits GROUP BY status;

-- name: intent_counts_by_status
SELECT status, count(*) AS n FROM deposit_intents GROUP BY status;
