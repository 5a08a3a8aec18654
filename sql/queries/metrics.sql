-- name: metrics_snapshot
-- Everything /metrics reports, in one round trip.
SELECT
    (SELECT coalesce(json_object_agg(status, n), '{}') FROM (SELECT status, count(*) AS n FROM deposits GROUP BY status) d)
        AS deposits,
    (SELECT coalesce(json_object_agg(status, n), '{}') FROM (SELECT status, count(*) AS n FROM jobs GROUP BY status) j)
        AS jobs,
    (SELECT count(*) FROM review_items WHERE status = 'open') AS open_reviews,
    (SELECT kill_switch FROM payout_guards) AS kill_switch,
    (SELECT lane_paused FROM payout_guards) AS lane_paused,
    (SELECT count(*) FROM payouts WHERE status = 'cancelling') AS payouts_cancelling,
    (SELECT count(*) FROM worker_heartbeats WHERE seen_at > now() - interval '90 seconds') AS live_workers;
