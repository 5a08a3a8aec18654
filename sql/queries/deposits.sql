-- name: insert_deposit
INSERT INTO deposits (id, user_id, status, amount_kes, kes_per_usd, amount_usdc, phone_masked, request_key)
VALUES ($1, $2, 'pending', $3, $4, $5, $6, $7);

-- name: deposit_of_request
-- The deposit an earlier request with the same Idempotency-Key created (user, key).
SELECT * FROM deposits WHERE user_id = $1 AND request_key = $2;

-- name: forget_request_key
-- A push Daraja refused reached no phone: the key may push again (the refused deposit stays, failed).
UPDATE deposits SET request_key = NULL WHERE id = $1 AND status = 'failed' AND checkout_request_id IS NULL
RETURNING id;

-- name: deposit_pushed
UPDATE deposits
SET checkout_request_id = $2, merchant_request_id = $3, next_query_at = now() + make_interval(secs => $4),
    pushed_at = now(), updated_at = now()
WHERE id = $1;

-- name: deposit_push_refused
UPDATE deposits
SET status = 'failed', failure_code = $2, failure_reason = $3, updated_at = now()
WHERE id = $1 AND status = 'pending';

-- name: deposit_to_review
UPDATE deposits
SET status = 'needs_review', review_reason = $2, updated_at = now()
WHERE id = $1 AND status IN ('pending', 'processing', 'failed');

-- name: lock_checkout
-- Serialises the push being recorded and its callback arriving early (same CheckoutRequestID).
SELECT pg_advisory_xact_lock(hashtextextended($1, 0));

-- name: deposit_by_id
SELECT d.*, u.deposit_address
FROM deposits d JOIN users u ON u.id = d.user_id
WHERE d.id = $1;

-- name: deposits_by_ids
-- Many deposits at once, with their users' addresses (the payout lane's unsettled payouts on taking the lane).
SELECT d.*, u.deposit_address
FROM deposits d JOIN users u ON u.id = d.user_id
WHERE d.id = ANY($1::uuid[]);

-- name: deposit_of_user
SELECT * FROM deposits WHERE id = $1 AND user_id = $2;

-- name: deposits_of_user
SELECT * FROM deposits WHERE user_id = $1 ORDER BY created_at DESC, id DESC LIMIT $2;

-- name: deposits_completed
-- Deposit ids and the tx hashes that paid them. Our payout was mined: it is paid, whatever we thought.
-- Locked in id order first, as the callbacks' group function does, so the two never deadlock.
WITH locked AS (
    SELECT id FROM deposits WHERE id = ANY($1::uuid[]) AND status IN ('processing', 'needs_review') ORDER BY id FOR UPDATE
)
UPDATE deposits d
SET status = 'completed', tx_hash = v.tx_hash, completed_at = now(), updated_at = now()
FROM locked JOIN unnest($1::uuid[], $2::text[]) AS v (id, tx_hash) ON v.id = locked.id
WHERE d.id = locked.id;

-- name: early_callbacks
SELECT count(*) FROM mpesa_callbacks WHERE checkout_request_id = $1 AND deposit_id IS NULL AND disposition <> 'malformed';

-- name: deposit_processing_since
SELECT processing_since FROM deposits WHERE id = $1;

-- name: deposits_due_for_query
-- Pending deposits whose callback has not come: ask Daraja (STK query).
SELECT id FROM deposits
WHERE status = 'pending' AND checkout_request_id IS NOT NULL AND next_query_at <= now()
ORDER BY next_query_at LIMIT $1;

-- name: deposit_query_scheduled
-- The query job is on its way: do not dispatch it again until it reschedules.
UPDATE deposits SET next_query_at = now() + make_interval(secs => $2) WHERE id = $1 AND status = 'pending';

-- name: deposit_status
SELECT status FROM deposits WHERE id = $1;

-- name: resolve_unconfirmed_review
UPDATE review_items SET status = 'resolved', resolved_at = now(), resolution = $2
WHERE dedupe_key = 'unconfirmed:' || $1::uuid::text AND status = 'open';

-- name: unknown_pushes_to_review
-- Pending deposits whose push has no CheckoutRequestID this long after they were recorded: the request
-- died between the insert and Daraja's answer (cancelled, or the process killed). Without the id there is
-- nothing to query: a person matches it with the callback, which went to review as unknown.
UPDATE deposits
SET status = 'needs_review', review_reason = $2, updated_at = now()
WHERE status = 'pending' AND checkout_request_id IS NULL AND created_at < now() - make_interval(secs => $1)
RETURNING id;
-- name: lock_user_deposits
-- Serialises one user's initiates, so that two at once cannot both pass the pending cap.
-- NO KEY UPDATE: it does not block rows that merely reference the user (foreign keys).
SELECT 1 FROM users WHERE id = $1 FOR NO KEY UPDATE;

-- name: pending_deposits_of_user
SELECT count(*) FROM deposits WHERE user_id = $1 AND status = 'pending';
