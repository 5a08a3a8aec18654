-- Issue 11, the edge: a user's pending deposits are counted on every initiate (at most 3 at once,
-- kiota.ratelimits), under that user's row lock; this keeps the count to the pending rows alone.
CREATE INDEX deposits_user_pending_idx ON deposits (user_id) WHERE status = 'pending';

-- The app's Idempotency-Key travels with the deposit it created (the client's id, saved before the
-- push): a retry whose key claim expired (its first process died mid-push) finds the deposit and
-- answers from it instead of pushing the customer's phone a second time (kiota.deposits.initiate).
ALTER TABLE deposits ADD COLUMN request_key text;
CREATE UNIQUE INDEX deposits_request_key_idx ON deposits (user_id, request_key) WHERE request_key IS NOT NULL;
