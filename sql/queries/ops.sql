-- What an operator reads and does (kiota/ops.py, kiota/ops_cli.py, kiota/reconcile.py); owned by kiota/store/ops.py.

-- name: stuck_deposits
-- Deposits an operator should look at: in review, or not finished after a while.
SELECT d.id, d.user_id, d.status, d.amount_kes, d.amount_usdc, d.mpesa_receipt, d.checkout_request_id,
       d.failure_reason, d.review_reason, d.confirmed_by, d.confirm_answer, d.created_at, d.updated_at,
       j.id AS job_id, j.status AS job_status, j.failures, j.last_error, j.blocked_reason
FROM deposits d
LEFT JOIN jobs j ON j.deposit_id = d.id
WHERE d.status = 'needs_review'
   OR (d.status IN ('pending', 'processing') AND d.updated_at < now() - make_interval(secs => $1))
ORDER BY d.created_at;

-- name: open_review_items
SELECT * FROM review_items WHERE status = 'open' ORDER BY created_at;

-- name: deposit_for_retry
SELECT * FROM deposits WHERE id = $1 FOR UPDATE;

-- name: deposit_retry_from_review
-- An operator's retry: back to processing, with a fresh 30-minute window. Only money
-- we received for this deposit (received_kes) and never paid out can be retried.
-- A success M-Pesa has not confirmed is asked about again, with a fresh bound (kiota/confirm.py).
UPDATE deposits
SET status = 'processing', review_reason = NULL, processing_since = now(), updated_at = now(),
    confirm_started_at = CASE WHEN confirmed_at IS NULL THEN NULL ELSE confirm_started_at END,
    confirm_attempts = CASE WHEN confirmed_at IS NULL THEN 0 ELSE confirm_attempts END
WHERE id = $1 AND status = 'needs_review' AND received_kes IS NOT NULL AND tx_hash IS NULL
  AND NOT EXISTS (SELECT 1 FROM review_items r WHERE r.deposit_id = $1 AND r.kind = 'mpesa_callback'
                  AND r.status = 'open')
RETURNING id;

-- name: deposit_confirmed_by_operator
-- An operator checked the M-Pesa statement: id, confirmed_by, what they wrote. Only money received for this
-- deposit (received_kes) and never paid out, and only once.
UPDATE deposits
SET confirmed_at = now(), confirmed_by = $2, confirm_answer = $3, updated_at = now()
WHERE id = $1 AND confirmed_at IS NULL AND status IN ('processing', 'needs_review')
  AND received_kes IS NOT NULL AND tx_hash IS NULL
RETURNING status;

-- name: blocked_jobs
SELECT * FROM jobs WHERE status = 'blocked';

-- name: requeue_blocked_job
UPDATE jobs SET status = 'queued', blocked_reason = NULL, updated_at = now() WHERE id = $1 AND status = 'blocked';

-- name: reconcile_users
SELECT u.id, u.deposit_address, coalesce(b.balance, 0) AS ledger_micro
FROM users u LEFT JOIN account_balances b ON b.user_id = u.id AND b.kind = 'user' AND b.asset = 'USDC'
ORDER BY u.address_index;
