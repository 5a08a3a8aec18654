-- name: user_by_id
SELECT * FROM users WHERE id = $1;

-- name: next_address_index
SELECT nextval('user_address_index_seq')::integer;

-- name: insert_user
-- No row back means another request created this user first; its index is kept.
INSERT INTO users (id, address_index, deposit_address)
VALUES ($1, $2, $3)
ON CONFLICT (id) DO NOTHING
RETURNING *;

-- name: insert_user_accounts
INSERT INTO accounts (code, kind, user_id, asset, normal_side)
SELECT 'user:' || $1 || ':' || asset, 'user', $1, asset, 'C'
FROM unnest($2::text[]) AS asset
ON CONFLICT (code) DO NOTHING;
