-- name: claim_idempotency_key
-- A row back means this request owns the key and must run; none means it was seen before.
INSERT INTO idempotency_keys (user_id, route, key, request_hash)
VALUES ($1, $2, $3, $4)
ON CONFLICT (user_id, route, key) DO NOTHING
RETURNING key;

-- name: idempotency_key
SELECT request_hash, response_status, response_body
FROM idempotency_keys
WHERE user_id = $1 AND route = $2 AND key = $3;

-- name: complete_idempotency_key
UPDATE idempotency_keys
SET response_status = $4, response_body = $5, completed_at = now()
WHERE user_id = $1 AND route = $2 AND key = $3 AND completed_at IS NULL;

-- name: release_idempotency_key
-- The first attempt failed without an answer worth replaying (5xx): let a retry run.
DELETE FROM idempotency_keys
WHERE user_id = $1 AND route = $2 AND key = $3 AND completed_at IS NULL;
