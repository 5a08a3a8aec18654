-- name: record_heartbeat
INSERT INTO worker_heartbeats (worker_id, hostname, pid, started_at, seen_at)
VALUES ($1, $2, $3, $4, now())
ON CONFLICT (worker_id) DO UPDATE SET seen_at = now();
