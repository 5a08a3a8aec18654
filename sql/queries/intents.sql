-- name: insert_intent
-- No row back while the user has an open intent (one open per user).
INSERT INTO deposit_intents (id, user_id, status, deposit_address, expected_amount_usdc, expires_at)
VALUES ($1, $2, 'awaiting_payment', $3, $4, now() + make_interval(secs => $5))
ON CONFLICT (user_id) WHERE status IN ('awaiting_payment', 'confirming') DO NOTHING
RETURNING *;

-- name: open_intent_for_user
SELECT * FROM deposit_intents WHERE user_id = $1 AND status IN ('awaiting_payment', 'confirming');

-- name: intent_of_user
-- The intent with the transfer that paid it (if seen) and the chain's head as last scanned.
SELECT i.*, t.tx_hash, t.block_number,
       (SELECT head FROM scan_rounds r WHERE r.chain_id = $3 ORDER BY r.id DESC LIMIT 1) AS last_head
FROM deposit_intents i
LEFT JOIN chain_transfers t ON t.id = i.transfer_id
WHERE i.id = $1 AND i.user_id = $2;
