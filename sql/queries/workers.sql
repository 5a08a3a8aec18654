-- name: record_heartbeat
-- worker_id, hostname, pid, started_at, the queues it consumes
INSERT INTO worker_heartbeats (worker_id, hostname, pid, started_at, seen_at, queues)
VALUES ($1, $2, $3, $4, now(), $5)
ON CONFLICT (worker_id) DO UPDATE SET seen_at = now(), queues = EXCLUDED.queues;

-- name: forget_worker
-- A worker that stops says so: it is no longer counted as consuming its queues.
DELETE FROM worker_heartbeats WHERE worker_id = $1;

-- name: recent_workers
-- Workers whose heartbeat is younger than $1 seconds (the caller checks their liveness locks), oldest first.
SELECT * FROM worker_heartbeats WHERE seen_at > now() - make_interval(secs => $1) ORDER BY started_at, worker_id;
