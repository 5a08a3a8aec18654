-- M-Pesa's answers about a push, posted (callbacks) or asked for (the STK query): kiota/store/callbacks.py.

-- name: callback_views
-- What each callback of a group needs decided: its deposit as it is now (none when the
-- CheckoutRequestID is unknown), whether its receipt is already on a deposit, and the id and
-- time its row will have. Nothing is locked: mpesa_apply_answers applies a decision only if
-- all of this is still so, under the CheckoutRequestID's lock.
SELECT i.ord, nextval('mpesa_callbacks_id_seq') AS callback_id, now() AS received_at,
       d.id AS deposit_id, d.status, d.amount_kes, d.mpesa_receipt, d.failure_code, d.received_kes,
       (i.receipt IS NOT NULL AND EXISTS (SELECT 1 FROM deposits r WHERE r.mpesa_receipt = i.receipt))
           AS receipt_taken
FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS i (checkout_request_id, receipt, ord)
LEFT JOIN deposits d ON d.checkout_request_id = i.checkout_request_id
ORDER BY i.ord;

-- name: apply_answers
-- One call, one transaction for a whole group (sql/migrations/0012): the ord of every answer
-- applied; the others are stale (decide them again).
SELECT mpesa_apply_answers($1::mpesa_answer_in[]);

-- name: callback_stamp
-- The id and time of a callback row about to be written on its own (a malformed one).
SELECT nextval('mpesa_callbacks_id_seq') AS id, now() AS received_at;

-- name: insert_callback
-- A callback row, built whole (by name) in kiota/callbacks.py.
INSERT INTO mpesa_callbacks SELECT ($1::mpesa_callbacks).*;

-- name: deposit_for_query
SELECT * FROM deposits WHERE id = $1;

-- name: deposit_query_again
-- The STK query had no final answer yet: asked again later. Only a deposit still pending.
UPDATE deposits
SET query_attempts = query_attempts + 1, next_query_at = now() + make_interval(secs => $2),
    last_query_result = $3, updated_at = now()
WHERE id = $1 AND status = 'pending'
RETURNING id;

-- name: deposit_unanswered_to_review
-- No final answer from M-Pesa in time: a person looks. Only a deposit still pending.
UPDATE deposits
SET status = 'needs_review', review_reason = $2, updated_at = now()
WHERE id = $1 AND status = 'pending'
RETURNING id;
