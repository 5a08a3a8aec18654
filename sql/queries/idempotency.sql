-- name: claim_idempotency_key
-- A row back (its claim time, the claim's token) means this request owns the key and must run;
-- none means it was seen before. A claim never completed whose process died mid-request is
-- taken over by the same body once it is older than $5 seconds (longer than any request runs).
INSERT INTO idempotency_keys (user_id, route, key, request_hash)
VALUES ($1, $2, $3, $4)
ON CONFLICT (user_id, route, key) DO UPDATE SET created_at = now()
WHERE idempotency_keys.completed_at IS NULL
  AND idempotency_keys.request_hash = EXCLUDED.request_hash
  AND idempotency_keys.created_at < now() - make_interval(secs => $5)
RETURNING created_at;

-- name: idempotency_key
SELECT request_hash, response_status, response_body
FROM idempotency_keys
WHERE user_id = $1 AND route = $2 AND key = $3;

-- name: complete_idempotency_key
-- Only by the claim that still holds the key ($6): one taken over after it expired answers nothing.
UPDATE idempotency_keys
SET response_status = $4, response_body = $5, completed_at = now()
WHERE user_id = $1 AND route = $2 AND key = $3 AND completed_at IS NULL AND created_at = $6;

-- name: release_idempotency_key
-- The first attempt failed without an answer worth replaying (5xx): let a retry run.
DELETE FROM idempotency_keys
WHERE user_id = $1 AND route = $2 AND key = $3 AND completed_at IS NULL AND created_at = $4;
