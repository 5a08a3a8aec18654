-- name: metrics_snapshot
-- Everything /metrics reads from PostgreSQL, in one round trip; $1 the chain whose ingester's cursor it reports.
SELECT
    (SELECT coalesce(json_object_agg(status, n), '{}') FROM (SELECT status, count(*) AS n FROM deposits GROUP BY status) d)
        AS deposits,
    (SELECT coalesce(json_object_agg(status, n), '{}') FROM (SELECT status, count(*) AS n FROM jobs GROUP BY status) j)
        AS jobs,
    (SELECT count(*) FROM review_items WHERE status = 'open') AS open_reviews,
    (SELECT kill_switch FROM payout_guards) AS kill_switch,
    -- Any lane paused: all of them (a reverted payout), or one treasury's (its shortfall).
    (SELECT lane_paused FROM payout_guards) OR EXISTS (SELECT 1 FROM treasury_lanes WHERE paused AND chain_id = $1)
        AS lane_paused,
    (SELECT coalesce(json_object_agg(address, paused), '{}') FROM treasury_lanes WHERE chain_id = $1)
        AS treasury_lanes,
    (SELECT count(*) FROM payouts WHERE status = 'cancelling') AS payouts_cancelling,
    -- Deposits blocked as larger than every running treasury's free USDC (kiota/payouts/lanes.py TOO_LARGE).
    (SELECT count(*) FROM jobs WHERE status = 'blocked' AND blocked_reason LIKE 'no treasury''s free USDC covers%')
        AS payouts_too_large,
    (SELECT count(*) FROM worker_heartbeats WHERE seen_at > now() - interval '90 seconds') AS live_workers,
    (SELECT next_block FROM chain_cursors WHERE chain_id = $1) AS next_block;
