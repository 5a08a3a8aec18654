-- A success confirmed by the STK query before its payout is signed: kiota/store/confirm.py.

-- name: confirm_claim
-- A confirmation attempt begins (kiota/confirm.py): only a processing deposit not yet confirmed comes
-- back. Its bound runs from the first attempt; the time waited is the database's, as every clock here.
UPDATE deposits d
SET confirm_started_at = coalesce(d.confirm_started_at, now())
WHERE d.id = $1 AND d.status = 'processing' AND d.confirmed_at IS NULL
RETURNING d.*,
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
SELECT * FROM mpesa_callbacks
WHERE checkout_request_id = $1 AND disposition = 'succeeded'
ORDER BY id;

-- name: open_unconfirmed_review
-- deposit id, amount (KES), reason. Listed once per deposit; opened again if a retry is refused again.
INSERT INTO review_items (kind, dedupe_key, deposit_id, amount_kes, reason)
VALUES ('unconfirmed_success', 'unconfirmed:' || $1::uuid::text, $1::uuid, $2, $3)
ON CONFLICT (dedupe_key) DO UPDATE
SET status = 'open', reason = EXCLUDED.reason, amount_kes = EXCLUDED.amount_kes, resolved_at = NULL,
    resolution = NULL;
