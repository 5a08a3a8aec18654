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

-- name: deposit_succeeded
UPDATE deposits
SET status = 'processing', mpesa_receipt = $2, received_kes = $3, paid_at_mpesa = $4,
    processing_since = now(), updated_at = now()
WHERE id = $1 AND status = 'pending';

-- name: deposit_failed
UPDATE deposits
SET status = 'failed', failure_code = $2, failure_reason = $3, updated_at = now()
WHERE id = $1 AND status = 'pending';

-- name: deposit_by_id
SELECT d.*, u.deposit_address
FROM deposits d JOIN users u ON u.id = d.user_id
WHERE d.id = $1;

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

-- name: insert_callback
INSERT INTO mpesa_callbacks (
    remote_addr, raw_body, parse_error, checkout_request_id, merchant_request_id, result_code, result_desc,
    amount_kes, mpesa_receipt, transaction_at, phone_masked, disposition, raw_bytes)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
RETURNING id;

-- name: early_callbacks
SELECT count(*) FROM mpesa_callbacks WHERE checkout_request_id = $1 AND deposit_id IS NULL AND disposition <> 'malformed';

-- name: deposit_processing_since
SELECT processing_since FROM deposits WHERE id = $1;

-- name: deposits_due_for_query
-- Pending deposits whose callback has not come: ask Daraja (STK query).
SELECT id FROM deposits
WHERE status = 'pending' AND checkout_request_id IS NOT NULL AND next_query_at <= now()
ORDER BY next_query_at LIMIT $1;

-- name: deposit_for_query
SELECT id, status, amount_kes, checkout_request_id, pushed_at, query_attempts, mpesa_receipt, failure_code
FROM deposits WHERE id = $1 FOR UPDATE;

-- name: deposit_query_again
UPDATE deposits
SET query_attempts = query_attempts + 1, next_query_at = now() + make_interval(secs => $2),
    last_query_result = $3, updated_at = now()
WHERE id = $1 AND status = 'pending';

-- name: deposit_query_scheduled
-- The query job is on its way: do not dispatch it again until it reschedules.
UPDATE deposits SET next_query_at = now() + make_interval(secs => $2) WHERE id = $1 AND status = 'pending';

-- name: deposit_status
SELECT status FROM deposits WHERE id = $1;

-- name: callback_views
-- What each callback of a group needs decided: its deposit as it is now (none when the
-- CheckoutRequestID is unknown), whether its receipt is already on a deposit, and the id
-- its row will have. Nothing is locked: mpesa_apply_callbacks applies a decision only if
-- all of this is still so, under the CheckoutRequestID's lock.
SELECT i.ord, nextval('mpesa_callbacks_id_seq') AS callback_id,
       d.id AS deposit_id, d.status, d.amount_kes, d.mpesa_receipt, d.failure_code, d.received_kes,
       (i.receipt IS NOT NULL AND EXISTS (SELECT 1 FROM deposits r WHERE r.mpesa_receipt = i.receipt))
           AS receipt_taken
FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS i (checkout_request_id, receipt, ord)
LEFT JOIN deposits d ON d.checkout_request_id = i.checkout_request_id
ORDER BY i.ord;

-- name: apply_callbacks
-- One call, one transaction for a whole group (sql/migrations/0008): the ord of every callback
-- applied; the others are stale (decide them again).
SELECT mpesa_apply_callbacks($1::mpesa_callback_in[]);

-- name: confirm_claim
-- A confirmation attempt begins (kiota/confirm.py): only a processing deposit not yet confirmed comes
-- back. Its bound runs from the first attempt; the time waited is the database's, as every clock here.
UPDATE deposits d
SET confirm_started_at = coalesce(d.confirm_started_at, now())
WHERE d.id = $1 AND d.status = 'processing' AND d.confirmed_at IS NULL
RETURNING d.checkout_request_id, d.confirm_attempts, d.received_kes,
          extract(epoch FROM now() - d.confirm_started_at)::float8 AS waited_seconds,
          EXISTS (SELECT 1 FROM review_items r WHERE r.dedupe_key = 'unconfirmed:' || d.id::text AND r.status = 'open')
              AS under_review;

-- name: deposit_confirmed
-- id, confirmed_by, the answer, attempts to count. Once: a confirmation is never replaced.
UPDATE deposits
SET confirmed_at = now(), confirmed_by = $2, confirm_answer = $3, confirm_attempts = confirm_attempts + $4,
    updated_at = now()
WHERE id = $1 AND status = 'processing' AND confirmed_at IS NULL
RETURNING id;

-- name: deposit_confirm_again
-- Not confirmed yet ("still processing", or Daraja unreachable): the answer kept, asked again later.
UPDATE deposits
SET confirm_attempts = confirm_attempts + 1, confirm_answer = $2, updated_at = now()
WHERE id = $1 AND status = 'processing' AND confirmed_at IS NULL
RETURNING confirm_attempts;

-- name: deposit_unconfirmed_to_review
-- M-Pesa did not confirm the success: review, unpaid; the callback's answer and the query's kept.
UPDATE deposits
SET status = 'needs_review', review_reason = $2, confirm_answer = $3, confirm_attempts = confirm_attempts + 1,
    updated_at = now()
WHERE id = $1 AND status = 'processing' AND confirmed_at IS NULL
RETURNING id;

-- name: success_callbacks_of_checkout
-- What the success callbacks said about a push: for the review of a success M-Pesa did not confirm.
SELECT id, received_at, remote_addr, result_code, result_desc, amount_kes, mpesa_receipt
FROM mpesa_callbacks
WHERE checkout_request_id = $1 AND disposition = 'succeeded'
ORDER BY id;

-- name: open_unconfirmed_review
-- deposit id, amount (KES), reason. Listed once per deposit; opened again if a retry is refused again.
INSERT INTO review_items (kind, dedupe_key, deposit_id, amount_kes, reason)
VALUES ('unconfirmed_success', 'unconfirmed:' || $1::uuid::text, $1::uuid, $2, $3)
ON CONFLICT (dedupe_key) DO UPDATE
SET status = 'open', reason = EXCLUDED.reason, amount_kes = EXCLUDED.amount_kes, resolved_at = NULL,
    resolution = NULL;

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
