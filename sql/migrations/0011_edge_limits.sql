-- Issue 11, the edge: a user's pending deposits are counted on every initiate (at most 3 at once,
-- kiota.ratelimits), under that user's row lock; this keeps the count to the pending rows alone.
CREATE INDEX deposits_user_pending_idx ON deposits (user_id) WHERE status = 'pending';
