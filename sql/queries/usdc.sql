-- name: chain_cursor
SELECT next_block FROM chain_cursors WHERE chain_id = $1;

-- name: store_cursor
INSERT INTO chain_cursors (chain_id, next_block) VALUES ($1, $2)
ON CONFLICT (chain_id) DO UPDATE SET next_block = EXCLUDED.next_block, updated_at = now();

-- name: deposit_addresses_among
-- Which of a round's recipients ($1, lower case, distinct) are deposit addresses, and whose: one probe each
-- of users_deposit_address_lower_key (0001), whatever the number of users. Not `= ANY($1)`: for a thousand
-- recipients the planner prefers a sequential scan of users (measured at 100,000 users), which grows with them.
SELECT u.id, r.address FROM unnest($1::text[]) AS r (address)
CROSS JOIN LATERAL (SELECT id FROM users WHERE lower(deposit_address) = r.address LIMIT 1) AS u;

-- name: own_payout_hashes
SELECT tx_hash FROM payout_attempts WHERE tx_hash = ANY($1::text[]);

-- name: known_treasuries
-- Every treasury that signed a payout on this chain (its nonce counter): never a depositor, even when the
-- chain worker's TREASURY_ADDRESS does not list it (yet).
SELECT address FROM treasury_nonces WHERE chain_id = $1;

-- name: upsert_transfers
-- Every transfer of a round in one statement (one row per identity: the caller numbers and dedupes them).
-- A transfer is keyed by what it is (transaction, token, from, to, amount, seq: kiota/usdc.py TransferKey),
-- not by its log index: seen again at another index or in another block (a reorg mined it again), its row
-- moves there, keeping its status (an orphaned one is live again). Rows already right are not rewritten.
-- Returns the id of every row this round's answer holds, new or not.
WITH v AS (
    SELECT * FROM unnest($2::text[], $3::int[], $4::bigint[], $5::text[], $6::text[], $7::text[], $8::text[],
                         $9::numeric[], $10::text[], $11::text[], $12::int[])
         AS v (tx_hash, log_index, block_number, block_hash, token_address, from_address, to_address,
               amount_micro, user_id, kind, seq)
), written AS (
    INSERT INTO chain_transfers (chain_id, tx_hash, log_index, block_number, block_hash, token_address,
                                 from_address, to_address, amount_micro, user_id, kind, seq)
    SELECT $1, v.* FROM v
    ON CONFLICT (chain_id, tx_hash, token_address, from_address, to_address, amount_micro, seq) DO UPDATE
    SET log_index = EXCLUDED.log_index, block_number = EXCLUDED.block_number, block_hash = EXCLUDED.block_hash,
        gone_rounds = 0,
        status = CASE WHEN chain_transfers.status = 'orphaned' THEN 'seen' ELSE chain_transfers.status END
    WHERE (chain_transfers.log_index, chain_transfers.block_number, chain_transfers.block_hash)
              IS DISTINCT FROM (EXCLUDED.log_index, EXCLUDED.block_number, EXCLUDED.block_hash)
       OR chain_transfers.status = 'orphaned' OR chain_transfers.gone_rounds > 0
    RETURNING id
)
SELECT id FROM written
UNION
SELECT t.id FROM chain_transfers t JOIN v
    ON (t.chain_id, t.tx_hash, t.token_address, t.from_address, t.to_address, t.amount_micro, t.seq)
     = ($1, v.tx_hash, v.token_address, v.from_address, v.to_address, v.amount_micro, v.seq);

-- name: orphan_missing
-- Transfers in the rescanned range that the canonical chain no longer has: not among the rows this round's
-- answer holds ($4). NOT IN over a subquery is a hashed lookup; a NOT EXISTS or <> ALL here is a nested loop,
-- a thousand logs times a thousand rows.
UPDATE chain_transfers t SET status = 'orphaned'
WHERE t.chain_id = $1 AND t.block_number BETWEEN $2 AND $3 AND t.status = 'seen'
  AND t.id NOT IN (SELECT unnest($4::bigint[]))
RETURNING t.id;

-- name: held_transfers_presence
-- Transfers held for a person (in review, or reversed) against this round's answer ($4: the ids of its rows):
-- one in the rescanned range ($2..$3) that the answer lacks, or that it holds in a block not yet confirmed
-- (above $5), is missing now; one it holds confirmed is on chain. A round is enough either way: this moves
-- no money, it only says whether a person may credit the transfer's USDC (kiota/review_rules.py `usdc_here`).
-- Returns each row whose state changed, and whether it is missing now.
UPDATE chain_transfers t
SET missing_since = CASE WHEN t.id = ANY($4::bigint[]) AND t.block_number <= $5 THEN NULL
                         ELSE coalesce(t.missing_since, now()) END
WHERE t.chain_id = $1 AND t.status IN ('review', 'reversed')
  AND (t.block_number BETWEEN $2 AND $3 OR t.id = ANY($4::bigint[]))
  AND (t.missing_since IS NULL) <> (t.id = ANY($4::bigint[]) AND t.block_number <= $5)  -- only a change
RETURNING t.id, t.missing_since IS NOT NULL AS missing;

-- name: transfers_to_credit
-- Confirmed transfers seen in this round's answer: deposits to credit, and those too large to credit
-- (the caller sends them to review).
SELECT * FROM chain_transfers
WHERE chain_id = $1 AND status = 'seen' AND kind IN ('deposit', 'too_large') AND block_number <= $2
  AND block_number >= $3
ORDER BY block_number, log_index
FOR UPDATE;

-- name: credited_gone_or_reversed_back
-- Read before the round's transaction, with this round's answer as transfer identities ($4-$9):
-- 'gone': credited transfers that the answer lacks, in the rescanned range or already suspected by the last
-- round (a reorg deeper than the confirmations, or a provider's incomplete answer: the caller asks the node).
-- 'back': reversed transfers that are in the answer again, wherever they are now.
WITH v AS (
    SELECT * FROM unnest($4::text[], $5::text[], $6::text[], $7::text[], $8::numeric[], $9::int[])
         AS v (tx_hash, token_address, from_address, to_address, amount_micro, seq)
), answered AS (
    SELECT t.id, t.status FROM chain_transfers t JOIN v
        ON (t.chain_id, t.tx_hash, t.token_address, t.from_address, t.to_address, t.amount_micro, t.seq)
         = ($1, v.tx_hash, v.token_address, v.from_address, v.to_address, v.amount_micro, v.seq)
), gone AS (
    SELECT t.* FROM chain_transfers t
    WHERE t.chain_id = $1 AND t.status = 'credited' AND t.block_number BETWEEN $2 AND $3
    UNION
    SELECT t.* FROM chain_transfers t WHERE t.chain_id = $1 AND t.status = 'credited' AND t.gone_rounds > 0
)
SELECT 'gone' AS what, g.* FROM gone g WHERE g.id NOT IN (SELECT id FROM answered)
UNION ALL
SELECT 'back', t.* FROM chain_transfers t WHERE t.id IN (SELECT id FROM answered WHERE status = 'reversed');

-- name: transfers_gone_rounds
-- Credited transfers a round found missing with their block replaced ($1: one more round in a row) and those
-- it found present or could not judge ($2: the count starts again).
UPDATE chain_transfers SET gone_rounds = CASE WHEN id = ANY($1::bigint[]) THEN gone_rounds + 1 ELSE 0 END
WHERE (id = ANY($1::bigint[]) OR id = ANY($2::bigint[])) AND status = 'credited';

-- name: transfers_reversed
-- Reversed because its log is gone: its USDC is missing from chain until a round sees it again, confirmed.
UPDATE chain_transfers SET status = 'reversed', reversed_at = now(), gone_rounds = 0, missing_since = now()
WHERE id = ANY($1::bigint[]) AND status = 'credited'
RETURNING *;

-- name: transfers_to_review
-- Not credited, and never credited automatically now: a person looks (review_items says why).
UPDATE chain_transfers SET status = 'review' WHERE id = ANY($1::bigint[]) AND status = 'seen';

-- name: insert_usdc_review_items
-- One review item per (transfer, kind): transfer ids, kinds, reasons. Returns the items created. Keyed by the
-- transfer's row, which stays one row wherever a reorg moves its log.
INSERT INTO review_items (kind, dedupe_key, chain_transfer_id, amount_usdc_micro, reason)
SELECT r.kind, 'usdc:transfer:' || t.id || ':' || r.kind, t.id,
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
-- A round's credits in one statement: each transfer credited with its flags and its entry's key, and each intent one
-- of them completes (at most one per intent). A transfer's flags travel comma-separated in one
-- text ('' for none): they are words of ours, and arrays of arrays must all be the same length.
WITH c AS (
    SELECT c.transfer_id, c.intent_id, c.amount, string_to_array(c.flags, ',') AS flags, c.credit_key
    FROM unnest($1::bigint[], $2::uuid[], $3::bigint[], $4::text[], $5::text[])
         AS c (transfer_id, intent_id, amount, flags, credit_key)
), credited AS (
    UPDATE chain_transfers t
    SET status = 'credited', credited_at = now(), intent_id = c.intent_id, flags = c.flags, credit_key = c.credit_key
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

-- name: intents_maybe_ending
-- Open intents past their ttl ($1: now) or their max checks ($2): the only ones kiota/usdc.py intent_end
-- may end. Not every open intent: at 100,000 users a round would read ten thousand rows to end none.
SELECT id, expires_at, checks FROM deposit_intents
WHERE status IN ('awaiting_payment', 'confirming') AND (expires_at <= $1 OR checks >= $2);

-- name: intents_expired
-- Intents that ended without a credit, each with its reason, in one statement.
UPDATE deposit_intents i SET status = 'expired', end_reason = e.end_reason, ended_at = now(), transfer_id = NULL
FROM unnest($1::uuid[], $2::text[]) AS e (id, end_reason)
WHERE i.id = e.id AND i.status IN ('awaiting_payment', 'confirming');

-- name: insert_round
INSERT INTO scan_rounds (chain_id, from_block, to_block, head, rpc_calls, transfers, started_at, finished_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, clock_timestamp());

-- name: upsert_wallet_balances
-- The on-chain USDC of users, read at block $3, cached (each user once in a call).
INSERT INTO wallet_balances (user_id, usdc_micro, block_number)
SELECT user_id, usdc_micro, $3 FROM unnest($1::text[], $2::bigint[]) AS b (user_id, usdc_micro)
ON CONFLICT (user_id) DO UPDATE SET usdc_micro = EXCLUDED.usdc_micro, block_number = EXCLUDED.block_number,
    updated_at = now()
WHERE wallet_balances.block_number <= EXCLUDED.block_number;
