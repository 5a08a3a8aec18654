-- name: chain_cursor
SELECT next_block FROM chain_cursors WHERE chain_id = $1;

-- name: store_cursor
INSERT INTO chain_cursors (chain_id, next_block) VALUES ($1, $2)
ON CONFLICT (chain_id) DO UPDATE SET next_block = EXCLUDED.next_block, updated_at = now();

-- name: deposit_addresses
SELECT id, lower(deposit_address) AS address FROM users;

-- name: own_payout_hashes
SELECT tx_hash FROM payout_attempts WHERE tx_hash = ANY($1::text[]);

-- name: upsert_transfers
-- Every transfer of a round in one statement (one row per key: the caller drops repeats).
-- A transfer seen again in another block (a reorg re-included it) moves there and is live again;
-- one seen where it was is left as it is.
INSERT INTO chain_transfers (chain_id, tx_hash, log_index, block_number, block_hash, token_address,
                             from_address, to_address, amount_micro, user_id, kind)
SELECT $1, t.*
FROM unnest($2::text[], $3::int[], $4::bigint[], $5::text[], $6::text[], $7::text[], $8::text[],
            $9::numeric[], $10::text[], $11::text[])
     AS t (tx_hash, log_index, block_number, block_hash, token_address, from_address, to_address,
           amount_micro, user_id, kind)
ON CONFLICT (chain_id, tx_hash, log_index) DO UPDATE
SET block_number = EXCLUDED.block_number, block_hash = EXCLUDED.block_hash,
    status = CASE WHEN chain_transfers.status = 'orphaned' THEN 'seen' ELSE chain_transfers.status END
WHERE chain_transfers.block_hash <> EXCLUDED.block_hash OR chain_transfers.block_number <> EXCLUDED.block_number
   OR chain_transfers.status = 'orphaned';

-- name: orphan_missing
-- Transfers in the rescanned range that the canonical chain no longer has. NOT IN over a
-- subquery is a hashed lookup (the arrays hold no NULL); a NOT EXISTS here was planned as a
-- nested loop, a thousand logs times a thousand rows.
UPDATE chain_transfers t SET status = 'orphaned'
WHERE t.chain_id = $1 AND t.block_number BETWEEN $2 AND $3 AND t.status = 'seen'
  AND (t.tx_hash, t.log_index) NOT IN (SELECT * FROM unnest($4::text[], $5::int[]))
RETURNING t.id;

-- name: transfers_to_credit
-- Confirmed transfers seen in this round's answer: deposits to credit, and those too large to credit
-- (the caller sends them to review).
SELECT id, tx_hash, log_index, user_id, amount_micro, block_number, to_address, kind
FROM chain_transfers
WHERE chain_id = $1 AND status = 'seen' AND kind IN ('deposit', 'too_large') AND block_number <= $2
  AND block_number >= $3
ORDER BY block_number, log_index
FOR UPDATE;

-- name: credited_gone_or_reversed_back
-- 'gone': credited transfers in the rescanned range that this round's answer no longer has (a reorg deeper
-- than the confirmations, or a provider's incomplete answer: the caller asks the receipts which).
-- 'back': reversed transfers that are in this round's answer again.
SELECT 'gone' AS what, t.id, t.tx_hash, t.log_index, t.user_id, t.amount_micro, t.to_address
FROM chain_transfers t
WHERE t.chain_id = $1 AND t.block_number BETWEEN $2 AND $3 AND t.status = 'credited'
  AND (t.tx_hash, t.log_index) NOT IN (SELECT * FROM unnest($4::text[], $5::int[]))
UNION ALL
SELECT 'back', t.id, t.tx_hash, t.log_index, t.user_id, t.amount_micro, t.to_address
FROM chain_transfers t
WHERE t.chain_id = $1 AND t.status = 'reversed'
  AND (t.tx_hash, t.log_index) IN (SELECT * FROM unnest($4::text[], $5::int[]));

-- name: transfers_reversed
UPDATE chain_transfers SET status = 'reversed', reversed_at = now()
WHERE id = ANY($1::bigint[]) AND status = 'credited'
RETURNING id, tx_hash, log_index, user_id, amount_micro;

-- name: transfers_to_review
-- Not credited, and never credited automatically now: a person looks (review_items says why).
UPDATE chain_transfers SET status = 'review' WHERE id = ANY($1::bigint[]) AND status = 'seen';

-- name: insert_usdc_review_items
-- One review item per (transfer, kind): transfer ids, kinds, reasons. Returns the items created.
INSERT INTO review_items (kind, dedupe_key, chain_transfer_id, amount_usdc_micro, reason)
SELECT r.kind, 'usdc:' || t.chain_id || ':' || t.tx_hash || ':' || t.log_index || ':' || r.kind, t.id,
       t.amount_micro, r.reason
FROM unnest($1::bigint[], $2::text[], $3::text[]) AS r (transfer_id, kind, reason)
JOIN chain_transfers t ON t.id = r.transfer_id
ORDER BY t.id
ON CONFLICT (dedupe_key) DO NOTHING
RETURNING chain_transfer_id, kind;

-- name: check_ledger_now
-- The ledger's deferred checks (0001), run now rather than at commit, so that a refused entry fails
-- inside the savepoint that wrote it; then deferred again for the rest of the transaction.
SET CONSTRAINTS postings_balanced, journal_entries_have_postings IMMEDIATE;
SET CONSTRAINTS postings_balanced, journal_entries_have_postings DEFERRED;

-- name: open_intents_of_users
SELECT id, user_id, expected_amount_usdc FROM deposit_intents
WHERE user_id = ANY($1::text[]) AND status IN ('awaiting_payment', 'confirming')
FOR UPDATE;

-- name: users_with_recently_expired_intent
SELECT DISTINCT user_id FROM deposit_intents
WHERE user_id = ANY($1::text[]) AND status = 'expired' AND ended_at > now() - interval '24 hours';

-- name: credit_transfers
-- A round's credits in one statement: each transfer credited with its flags, and each intent one
-- of them completes (at most one per intent). A transfer's flags travel comma-separated in one
-- text ('' for none): they are words of ours, and arrays of arrays must all be the same length.
WITH c AS (
    SELECT c.transfer_id, c.intent_id, c.amount, string_to_array(c.flags, ',') AS flags
    FROM unnest($1::bigint[], $2::uuid[], $3::bigint[], $4::text[]) AS c (transfer_id, intent_id, amount, flags)
), credited AS (
    UPDATE chain_transfers t
    SET status = 'credited', credited_at = now(), intent_id = c.intent_id, flags = c.flags
    FROM c WHERE t.id = c.transfer_id
    RETURNING t.id
)
UPDATE deposit_intents i
SET status = 'completed', end_reason = 'confirmed', received_amount_usdc = c.amount, transfer_id = c.transfer_id,
    flags = c.flags, ended_at = now()
FROM c WHERE i.id = c.intent_id;

-- name: intents_confirming
-- An open intent with a live, not yet credited deposit to its address is confirming (with the
-- first such deposit in chain order); without one, awaiting. Rows already right are not rewritten.
UPDATE deposit_intents i
SET status = w.status, transfer_id = w.transfer_id
FROM (SELECT o.id, CASE WHEN t.id IS NULL THEN 'awaiting_payment' ELSE 'confirming' END AS status,
             t.id AS transfer_id
      FROM deposit_intents o
      LEFT JOIN (SELECT DISTINCT ON (user_id) user_id, id FROM chain_transfers
                 WHERE chain_id = $1 AND kind = 'deposit' AND status = 'seen'
                 ORDER BY user_id, block_number, log_index) AS t ON t.user_id = o.user_id
      WHERE o.status IN ('awaiting_payment', 'confirming')) AS w
WHERE i.id = w.id AND (i.status, i.transfer_id) IS DISTINCT FROM (w.status, w.transfer_id);

-- name: count_intent_checks
UPDATE deposit_intents SET checks = checks + 1
WHERE status IN ('awaiting_payment', 'confirming') AND created_at <= $1;

-- name: open_intents
SELECT id, expires_at, checks FROM deposit_intents WHERE status IN ('awaiting_payment', 'confirming');

-- name: intents_expired
-- Intents that ended without a credit, each with its reason, in one statement.
UPDATE deposit_intents i SET status = 'expired', end_reason = e.end_reason, ended_at = now(), transfer_id = NULL
FROM unnest($1::uuid[], $2::text[]) AS e (id, end_reason)
WHERE i.id = e.id AND i.status IN ('awaiting_payment', 'confirming');

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

-- name: upsert_wallet_balances
-- The on-chain USDC of users, read at block $3, cached (each user once in a call).
INSERT INTO wallet_balances (user_id, usdc_micro, block_number)
SELECT user_id, usdc_micro, $3 FROM unnest($1::text[], $2::bigint[]) AS b (user_id, usdc_micro)
ON CONFLICT (user_id) DO UPDATE SET usdc_micro = EXCLUDED.usdc_micro, block_number = EXCLUDED.block_number,
    updated_at = now()
WHERE wallet_balances.block_number <= EXCLUDED.block_number;

-- name: reconcile_users
SELECT u.id, u.deposit_address, coalesce(b.balance, 0) AS ledger_micro
FROM users u LEFT JOIN account_balances b ON b.user_id = u.id AND b.kind = 'user' AND b.asset = 'USDC'
ORDER BY u.address_index;
