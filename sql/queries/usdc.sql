-- name: chain_cursor
SELECT next_block FROM chain_cursors WHERE chain_id = $1;

-- name: store_cursor
INSERT INTO chain_cursors (chain_id, next_block) VALUES ($1, $2)
ON CONFLICT (chain_id) DO UPDATE SET next_block = EXCLUDED.next_block, updated_at = now();

-- name: deposit_addresses
SELECT id, lower(deposit_address) AS address FROM users;

-- name: own_payout_hashes
SELECT tx_hash FROM payout_attempts WHERE tx_hash = ANY($1::text[]);

-- name: upsert_transfer
-- A transfer seen again in another block (a reorg re-included it) moves there and is live again.
INSERT INTO chain_transfers (chain_id, tx_hash, log_index, block_number, block_hash, token_address,
                             from_address, to_address, amount_micro, user_id, kind)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
ON CONFLICT (chain_id, tx_hash, log_index) DO UPDATE
SET block_number = EXCLUDED.block_number, block_hash = EXCLUDED.block_hash,
    status = CASE WHEN chain_transfers.status = 'orphaned' THEN 'seen' ELSE chain_transfers.status END;

-- name: orphan_missing
-- Transfers in the rescanned range that the canonical chain no longer has.
UPDATE chain_transfers t SET status = 'orphaned'
WHERE t.chain_id = $1 AND t.block_number BETWEEN $2 AND $3 AND t.status = 'seen'
  AND NOT EXISTS (SELECT 1 FROM unnest($4::text[], $5::int[]) AS s (tx_hash, log_index)
                  WHERE s.tx_hash = t.tx_hash AND s.log_index = t.log_index)
RETURNING t.id;

-- name: transfers_to_credit
SELECT id, tx_hash, log_index, user_id, amount_micro, block_number, to_address
FROM chain_transfers
WHERE chain_id = $1 AND status = 'seen' AND kind = 'deposit' AND block_number <= $2 AND block_number >= $3
ORDER BY block_number, log_index
FOR UPDATE;

-- name: transfer_credited
UPDATE chain_transfers SET status = 'credited', credited_at = now(), intent_id = $2, flags = $3::text[]
WHERE id = $1;

-- name: open_intent_of_user
SELECT id, expected_amount_usdc FROM deposit_intents
WHERE user_id = $1 AND status IN ('awaiting_payment', 'confirming')
FOR UPDATE;

-- name: recently_expired_intent
SELECT 1 FROM deposit_intents
WHERE user_id = $1 AND status = 'expired' AND ended_at > now() - interval '24 hours' LIMIT 1;

-- name: intent_confirmed
UPDATE deposit_intents
SET status = 'completed', end_reason = 'confirmed', received_amount_usdc = $2, transfer_id = $3,
    flags = $4::text[], ended_at = now()
WHERE id = $1;

-- name: intents_confirming
-- An open intent with a live, not yet credited deposit to its address is confirming; without one, awaiting.
UPDATE deposit_intents i
SET status = CASE WHEN t.id IS NULL THEN 'awaiting_payment' ELSE 'confirming' END, transfer_id = t.id
FROM (SELECT i2.id AS intent_id,
             (SELECT ct.id FROM chain_transfers ct
              WHERE ct.chain_id = $1 AND ct.user_id = i2.user_id AND ct.kind = 'deposit' AND ct.status = 'seen'
              ORDER BY ct.block_number, ct.log_index LIMIT 1) AS id
      FROM deposit_intents i2 WHERE i2.status IN ('awaiting_payment', 'confirming')) AS t
WHERE i.id = t.intent_id;

-- name: count_intent_checks
UPDATE deposit_intents SET checks = checks + 1
WHERE status IN ('awaiting_payment', 'confirming') AND created_at <= $1;

-- name: open_intents
SELECT id, expires_at, checks FROM deposit_intents WHERE status IN ('awaiting_payment', 'confirming');

-- name: intent_expired
UPDATE deposit_intents SET status = 'expired', end_reason = $2, ended_at = now(), transfer_id = NULL
WHERE id = $1 AND status IN ('awaiting_payment', 'confirming');

-- name: insert_round
INSERT INTO scan_rounds (chain_id, from_block, to_block, head, rpc_calls, transfers, started_at, finished_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, clock_timestamp());

-- name: insert_intent
INSERT INTO deposit_intents (id, user_id, status, deposit_address, expected_amount_usdc, expires_at)
VALUES ($1, $2, 'awaiting_payment', $3, $4, now() + make_interval(secs => $5))
ON CONFLICT (user_id) WHERE status IN ('awaiting_payment', 'confirming') DO NOTHING
RETURNING id;

-- name: open_intent_for_user
SELECT id FROM deposit_intents WHERE user_id = $1 AND status IN ('awaiting_payment', 'confirming');

-- name: intent_of_user
SELECT i.*, t.tx_hash, t.block_number,
       (SELECT head FROM scan_rounds r WHERE r.chain_id = $3 ORDER BY r.id DESC LIMIT 1) AS last_head
FROM deposit_intents i
LEFT JOIN chain_transfers t ON t.id = i.transfer_id
WHERE i.id = $1 AND i.user_id = $2;

-- name: reconcile_users
SELECT u.id, u.deposit_address, coalesce(b.balance, 0) AS ledger_micro
FROM users u LEFT JOIN account_balances b ON b.user_id = u.id AND b.kind = 'user' AND b.asset = 'USDC'
ORDER BY u.address_index;
