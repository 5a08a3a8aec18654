-- name: guards
SELECT * FROM payout_guards;

-- name: set_kill_switch
UPDATE payout_guards SET kill_switch = $1, updated_at = now(), updated_by = $2;

-- name: pause_lane
UPDATE payout_guards SET lane_paused = true, pause_reason = $1, updated_at = now(), updated_by = 'worker'
WHERE NOT lane_paused;

-- name: resume_lane
UPDATE payout_guards SET lane_paused = false, pause_reason = NULL, updated_at = now(), updated_by = $1;

-- name: pause_treasury
-- One treasury's lane paused (its shortfall); the first reason is kept until an operator resumes it.
INSERT INTO treasury_lanes (chain_id, address, paused, pause_reason, updated_by) VALUES ($1, $2, true, $3, 'worker')
ON CONFLICT (chain_id, address) DO UPDATE
SET paused = true, pause_reason = EXCLUDED.pause_reason, updated_at = now(), updated_by = 'worker'
WHERE NOT treasury_lanes.paused;

-- name: resume_treasuries
-- Treasury lanes resumed: one ($1) or, with $1 null, all of them; returns the ones that were paused. Their
-- remembered free USDC is forgotten (an operator refilled them): their lanes read it again in their next turn.
WITH resumed AS (
    UPDATE treasury_lanes SET paused = false, pause_reason = NULL, updated_at = now(), updated_by = $2
    WHERE paused AND ($1::text IS NULL OR lower(address) = lower($1))
    RETURNING chain_id, address, pause_reason
), forgotten AS (
    DELETE FROM treasury_funds f USING resumed r WHERE f.chain_id = r.chain_id AND f.address = r.address
)
SELECT address, pause_reason FROM resumed;

-- name: treasury_lanes
SELECT * FROM treasury_lanes WHERE chain_id = $1 ORDER BY address;

-- name: all_treasury_lanes
-- Every treasury known here (it signed a payout, its lane was paused or read its funds), with its lane's state, its
-- last-read free USDC (several treasuries) and its payouts
-- still in flight: signed, being cancelled, or settled and not final (only its own lane re-sends, fills or
-- re-checks them: a treasury is retired only once it has none). Each count is one partial index's.
SELECT k.chain_id, k.address, coalesce(l.paused, false) AS paused, l.pause_reason,
    (SELECT count(*) FROM payouts p WHERE p.status = 'signed' AND p.chain_id = k.chain_id AND p.from_address = k.address)
    + (SELECT count(*) FROM payouts p
       WHERE p.status = 'cancelling' AND p.chain_id = k.chain_id AND p.from_address = k.address)
    + (SELECT count(*) FROM payouts p
       WHERE p.status = 'confirmed' AND p.final_at IS NULL AND p.chain_id = k.chain_id AND p.from_address = k.address)
    AS in_flight,
    f.free_usdc_micro
FROM (
    SELECT chain_id, address FROM treasury_nonces UNION SELECT chain_id, address FROM treasury_lanes
    UNION SELECT chain_id, address FROM treasury_funds
) k
LEFT JOIN treasury_lanes l USING (chain_id, address)
LEFT JOIN treasury_funds f USING (chain_id, address)
ORDER BY k.chain_id, k.address;

-- name: note_treasury_funds
-- A treasury's free USDC (balance less payouts in flight), as its lane read it before signing.
INSERT INTO treasury_funds (chain_id, address, free_usdc_micro, read_at) VALUES ($1, $2, $3, now())
ON CONFLICT (chain_id, address) DO UPDATE SET free_usdc_micro = EXCLUDED.free_usdc_micro, read_at = now();

-- name: treasury_funds
-- Each treasury's last-read free USDC on a chain, and how many seconds ago it was read.
SELECT address, free_usdc_micro, extract(epoch FROM now() - read_at)::float8 AS age_seconds
FROM treasury_funds WHERE chain_id = $1;

-- name: deposit_route
-- What choosing a deposit's lane reads (kiota/payouts/lanes.py), in one statement: the deposit's status, amount and
-- paying transaction, and the treasury of its payout that may still be mined (signed, or given up on and not yet
-- decided), if any: that payout's lane alone re-sends, replaces and settles it. And, on the chain ($2), the
-- treasuries whose lanes are paused, and each treasury's last-read free USDC with its age in seconds (as
-- `treasury_lanes` and `treasury_funds` read them). No row: no such deposit.
SELECT d.status, d.amount_usdc, d.tx_hash,
    (SELECT p.from_address FROM payouts p
     WHERE p.deposit_id = d.id AND p.status IN ('signed', 'cancelling') ORDER BY p.id LIMIT 1) AS signed_by,
    (SELECT coalesce(array_agg(l.address), '{}') FROM treasury_lanes l WHERE l.chain_id = $2 AND l.paused) AS paused,
    (SELECT coalesce(jsonb_agg(jsonb_build_object(
         'address', f.address, 'free', f.free_usdc_micro, 'age', extract(epoch FROM now() - f.read_at)::float8)), '[]')
     FROM treasury_funds f WHERE f.chain_id = $2) AS funds
FROM deposits d WHERE d.id = $1;

-- name: caps_lock
-- Held until the signing transaction ends: lanes sign one batch at a time against the shared caps.
SELECT pg_advisory_xact_lock($1);

-- name: set_limits
UPDATE payout_guards
SET per_deposit_max_micro = coalesce($1, per_deposit_max_micro),
    hourly_cap_micro = coalesce($2, hourly_cap_micro),
    daily_cap_micro = coalesce($3, daily_cap_micro),
    updated_at = now(), updated_by = $4;

-- name: live_payouts_for_deposits
SELECT * FROM payouts WHERE deposit_id = ANY($1::uuid[]) AND status NOT IN ('reverted', 'cancelled');

-- name: insert_payouts
-- A 'created' payout for each deposit that has no live one: deposit ids, recipients, amounts.
INSERT INTO payouts (deposit_id, chain_id, token_address, from_address, to_address, amount_micro, status)
SELECT v.deposit_id, $4, $5, $6, v.to_address, v.amount_micro, 'created'
FROM unnest($1::uuid[], $2::text[], $3::bigint[]) AS v (deposit_id, to_address, amount_micro)
ON CONFLICT (deposit_id) WHERE status NOT IN ('reverted', 'cancelled') DO NOTHING;

-- name: paid_out_since
-- What left the treasury (or is on its way) in a window, for the hourly and daily caps: counted from
-- when each payout was signed (stamped by the database, sql/migrations/0010), not when its row was
-- created, so payouts created long ago and signed now count now. The whole minutes of the window from
-- their running totals (sql/migrations/0023), its first, partial minute from the payouts themselves:
-- every payout signed after now() - $2 seconds, once.
WITH edge AS (SELECT now() - make_interval(secs => $2) AS since,
                     date_trunc('minute', now() - make_interval(secs => $2)) + interval '1 minute' AS whole_from)
SELECT ((SELECT coalesce(sum(m.amount_micro), 0) FROM payout_cap_minutes m, edge
         WHERE m.chain_id = $1 AND m.minute >= edge.whole_from)
      + (SELECT coalesce(sum(p.amount_micro), 0) FROM payouts p, edge
         WHERE payout_cap_counts(p.status, p.signed_at) AND p.chain_id = $1
           AND p.signed_at > edge.since AND p.signed_at < edge.whole_from))::bigint;

-- name: cap_totals_drift
-- The caps' running totals (sql/migrations/0023) of chain $1 against the payouts they count, minute by minute,
-- over the last $2 seconds (payouts_signed_at_idx): the minutes that disagree, with both sums. None unless payouts
-- were written with their triggers off (a data-only restore, session_replication_role = replica); README,
-- Runbook, rebuilds them.
WITH since AS (SELECT date_trunc('minute', now() - make_interval(secs => $2)) AS minute),
counted AS (
    SELECT date_trunc('minute', p.signed_at) AS minute, sum(p.amount_micro)::bigint AS amount_micro
    FROM payouts p, since
    WHERE p.chain_id = $1 AND p.signed_at >= since.minute AND payout_cap_counts(p.status, p.signed_at)
    GROUP BY 1),
totals AS (SELECT m.minute, m.amount_micro FROM payout_cap_minutes m, since
           WHERE m.chain_id = $1 AND m.minute >= since.minute)
SELECT minute, coalesce(c.amount_micro, 0)::bigint AS payouts_micro, coalesce(t.amount_micro, 0)::bigint AS totals_micro
FROM counted c FULL JOIN totals t USING (minute)
WHERE coalesce(c.amount_micro, 0) <> coalesce(t.amount_micro, 0)
ORDER BY minute;

-- name: in_flight_micro
-- One treasury's ($2) USDC on its way. Signed and not settled: a payout being cancelled may still be mined. And settled payouts whose block a
-- reorg removed: they are sent again, so the USDC the treasury shows again is not there to spend twice.
SELECT coalesce(sum(amount_micro), 0)::bigint FROM payouts
WHERE chain_id = $1 AND from_address = $2
  AND (status IN ('signed', 'cancelling') OR (status = 'confirmed' AND final_at IS NULL AND block_number IS NULL));

-- name: lock_nonce
SELECT next_nonce FROM treasury_nonces WHERE chain_id = $1 AND address = $2 FOR UPDATE;

-- name: store_nonce
INSERT INTO treasury_nonces (chain_id, address, next_nonce) VALUES ($1, $2, $3)
ON CONFLICT (chain_id, address) DO UPDATE SET next_nonce = EXCLUDED.next_nonce;

-- name: payouts_still_created
-- Locked in id order (as every multi-row lock here), so two batches can never wait on each other in a circle,
-- and claimed for the signing treasury ($2): a payout never signed may move to another lane (its own lane
-- paused, or a treasury added), but once signed its nonce is its treasury's, and another lane's claim waits
-- for this lock and then finds it signed. So two lanes never both sign one deposit.
WITH locked AS (
    SELECT id FROM payouts WHERE id = ANY($1::bigint[]) AND status = 'created' ORDER BY id FOR UPDATE
)
UPDATE payouts p SET from_address = $2, updated_at = now()
FROM locked WHERE p.id = locked.id
RETURNING p.id;

-- name: payouts_signed
UPDATE payouts p SET nonce = v.nonce, status = 'signed', updated_at = now()
FROM unnest($1::bigint[], $2::bigint[]) AS v (id, nonce)
WHERE p.id = v.id AND p.status = 'created';

-- name: insert_attempts
INSERT INTO payout_attempts (payout_id, nonce, tx_hash, raw_tx, max_fee_per_gas, max_priority_fee_per_gas, gas_limit,
                             kind)
SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::text[], $5::numeric[], $6::numeric[], $7::bigint[],
                     $8::text[])
ON CONFLICT (tx_hash) DO NOTHING;

-- name: attempt_broadcast
UPDATE payout_attempts SET broadcast_at = coalesce(broadcast_at, now()), broadcast_block = coalesce(broadcast_block, $2)
WHERE tx_hash = $1;

-- name: attempts_of_payout
SELECT * FROM payout_attempts WHERE payout_id = $1 ORDER BY id;

-- name: payouts_confirmed
-- Payout ids, tx hashes, block numbers: each mined payout settled. The caller has locked their deposits.
UPDATE payouts p
SET status = 'confirmed', tx_hash = v.tx_hash, block_number = v.block_number, settled_at = now(), updated_at = now()
FROM unnest($1::bigint[], $2::text[], $3::bigint[]) AS v (id, tx_hash, block_number)
WHERE p.id = v.id AND p.status IN ('signed', 'cancelling');

-- name: payout_reverted
UPDATE payouts SET status = 'reverted', tx_hash = $2, block_number = $3, settled_at = now(), updated_at = now()
WHERE id = $1 AND status IN ('signed', 'cancelling');

-- name: payout_abandon
-- The deposit's payout is given up on: one never signed is simply cancelled; a signed one
-- holds a nonce, which the lane must fill (or see used) before it is cancelled.
UPDATE payouts
SET status = CASE WHEN nonce IS NULL THEN 'cancelled' ELSE 'cancelling' END,
    settled_at = CASE WHEN nonce IS NULL THEN now() END,
    cancel_reason = $2, updated_at = now()
WHERE deposit_id = $1 AND status IN ('created', 'signed');

-- name: cancelling_payouts
SELECT * FROM payouts WHERE status = 'cancelling' AND chain_id = $1 AND from_address = $2 ORDER BY nonce;

-- name: any_cancelling
SELECT EXISTS (SELECT 1 FROM payouts WHERE status = 'cancelling' AND chain_id = $1 AND from_address = $2);

-- name: payout_filled
UPDATE payouts SET status = 'cancelled', tx_hash = $2, block_number = $3, settled_at = now(), updated_at = now()
WHERE id = $1 AND status = 'cancelling';

-- name: deposits_awaiting_payout
-- Processing deposits with no payout yet (or one never signed: a turn blocked by a cap created it), for the
-- lane's owner to pay in the same turn. One retried after a failed payout is left to its own job. Only
-- confirmed ones (kiota/confirm.py): a success callback that M-Pesa has not confirmed never rides along.
SELECT d.*, u.deposit_address
FROM deposits d JOIN users u ON u.id = d.user_id
WHERE d.status = 'processing' AND d.confirmed_at IS NOT NULL AND d.id IS DISTINCT FROM $1::uuid
  AND d.amount_usdc <= $2
  AND NOT EXISTS (SELECT 1 FROM payouts p WHERE p.deposit_id = d.id AND p.status <> 'created')
  -- Only the deposits of this lane's slots (of $4 lanes): kiota/payouts/lanes.py `slot_of`, the same hash.
  AND ($4::int <= 1 OR ('x' || substr(md5(d.id::text), 1, 7))::bit(28)::int % $4 = ANY($5::int[]))
ORDER BY d.processing_since, d.id  -- ties (callbacks committed in one group) in a fixed order
LIMIT $3;

-- name: attempts_broadcast
UPDATE payout_attempts SET broadcast_at = coalesce(broadcast_at, now()), broadcast_block = coalesce(broadcast_block, $2)
WHERE tx_hash = ANY($1::text[]);

-- name: unsettled_payouts
-- Signed and not settled: the lane's owner re-sends them in nonce order and settles what is mined.
SELECT * FROM payouts WHERE status = 'signed' AND chain_id = $1 AND from_address = $2 ORDER BY nonce LIMIT $3;

-- name: guards_for_share
SELECT * FROM payout_guards FOR SHARE;

-- name: deposits_still_processing
-- The deposits a turn may sign for, locked: still processing, and confirmed with M-Pesa.
SELECT id FROM deposits WHERE id = ANY($1::uuid[]) AND status = 'processing' AND confirmed_at IS NOT NULL
ORDER BY id FOR SHARE;

-- name: cancelling_for_seconds
SELECT extract(epoch FROM now() - updated_at) FROM payouts WHERE id = $1 AND status = 'cancelling';

-- name: unfinal_payouts
-- Settled payouts that are not final yet, lowest nonces first.
SELECT * FROM payouts
WHERE status = 'confirmed' AND final_at IS NULL AND chain_id = $1 AND from_address = $2
ORDER BY nonce LIMIT $3;

-- name: any_unsettled_since
-- A payout of this treasury signed more than $3 seconds ago and still unsettled (the sweeper's turn settles it).
SELECT EXISTS (SELECT 1 FROM payouts WHERE status = 'signed' AND chain_id = $1 AND from_address = $2
               AND updated_at < now() - make_interval(secs => $3));

-- name: any_unfinal_payout
SELECT EXISTS (SELECT 1 FROM payouts WHERE status = 'confirmed' AND final_at IS NULL AND chain_id = $1 AND from_address = $2);

-- name: attempts_of_payouts
SELECT * FROM payout_attempts WHERE payout_id = ANY($1::bigint[]) ORDER BY id;

-- name: payouts_rechecked
-- Payout ids, tx hashes, blocks, finals: where each settled payout is mined now, and whether that is final.
-- A deposit shows the transaction that is mined (another attempt at the same nonce may have replaced it).
WITH v AS (
    SELECT * FROM unnest($1::bigint[], $2::text[], $3::bigint[], $4::boolean[]) AS v (id, tx_hash, block_number, final)
), p AS (
    UPDATE payouts p
    SET tx_hash = v.tx_hash, block_number = v.block_number, final_at = CASE WHEN v.final THEN now() END,
        out_of_chain_block = NULL, updated_at = now()
    FROM v WHERE p.id = v.id AND p.status = 'confirmed' AND p.final_at IS NULL
    RETURNING p.deposit_id, p.tx_hash
)
UPDATE deposits d SET tx_hash = p.tx_hash, updated_at = now()
FROM p WHERE d.id = p.deposit_id AND d.tx_hash IS DISTINCT FROM p.tx_hash;

-- name: payout_out_of_chain
-- A settled payout whose block a reorg removed: in no block for now (updated_at says since when, and
-- out_of_chain_block at which head: its fees are raised after replace_after_blocks more, as a new payout's).
UPDATE payouts SET block_number = NULL, out_of_chain_block = $2, updated_at = now()
WHERE id = $1 AND status = 'confirmed' AND final_at IS NULL AND block_number IS NOT NULL;

-- name: payout_out_of_chain_for_seconds
SELECT extract(epoch FROM now() - updated_at) FROM payouts WHERE id = $1 AND block_number IS NULL;

-- name: payout_lost
-- A settled payout that the chain now says did not move the money: no longer live, never final.
UPDATE payouts SET status = 'reverted', updated_at = now()
WHERE id = $1 AND status = 'confirmed' AND final_at IS NULL;

-- name: insert_payout_review_item
INSERT INTO review_items (kind, dedupe_key, deposit_id, reason)
VALUES ('payout_lost', 'payout:' || $1::bigint || ':lost', $2, $3)
ON CONFLICT (dedupe_key) DO NOTHING;

-- name: payout_in_flight_of_deposit
-- A deposit's payout that may still be mined: signed, or given up on and not yet decided (kiota/payouts/).
SELECT * FROM payouts WHERE deposit_id = $1 AND status IN ('signed', 'cancelling');

-- name: guards_for_update
-- An operator's change to the guards, read first for its record (kiota/ops.py): one change at a time.
SELECT * FROM payout_guards FOR UPDATE;

-- name: treasury_addresses
-- Every treasury that ever signed a payout (its nonce counter), for reconcile and the dashboard.
SELECT DISTINCT address FROM treasury_nonces ORDER BY address;

-- name: paid_out_by_treasury
-- USDC each treasury paid out, by its settled payouts.
SELECT from_address, coalesce(sum(amount_micro), 0)::bigint AS paid FROM payouts
WHERE status = 'confirmed' AND purpose = 'deposit' GROUP BY from_address;

-- name: deposit_payout_state
-- A job waiting for the lane: its deposit's status, and whether its payout is signed and unsettled (in flight
-- in the lane owner's pipeline, which settles it as its block arrives).
SELECT d.status, EXISTS (SELECT 1 FROM payouts p WHERE p.deposit_id = d.id AND p.status = 'signed') AS in_flight
FROM deposits d WHERE d.id = $1;

-- name: payouts_still_signed
-- Of these payouts, the ones still signed and unsettled (one given up on meanwhile is 'cancelling').
SELECT id FROM payouts WHERE id = ANY($1::bigint[]) AND status = 'signed';
