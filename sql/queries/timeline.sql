-- A deposit's or an intent's whole story, and the search that finds them (the dashboard's money views:
-- kiota/money_views.py); owned by kiota/store/timeline.py.

-- name: search_money
-- $1 the text as typed, $2 the same as a uuid (or NULL), $3 a phone's last four digits (or NULL), $4 a whole
-- phone as it is stored, masked (or NULL). Every deposit, intent, and unsolicited transfer it names, newest first.
SELECT 'deposit' AS kind, d.id::text AS id, d.user_id, d.status, d.amount_kes::numeric AS amount, 'KES' AS asset,
       d.phone_masked, d.created_at AS at
FROM deposits d
WHERE d.id = $2 OR d.checkout_request_id = $1 OR d.merchant_request_id = $1 OR d.mpesa_receipt = upper($1)
   OR lower(d.tx_hash) = lower($1) OR d.user_id = $1
   OR ($3::text IS NOT NULL AND right(d.phone_masked, 4) = $3 AND ($4::text IS NULL OR d.phone_masked = $4))
   OR d.id IN (SELECT c.deposit_id FROM mpesa_callbacks c
               WHERE c.deposit_id IS NOT NULL AND (c.mpesa_receipt = upper($1) OR c.checkout_request_id = $1))
   OR d.id IN (SELECT p.deposit_id FROM payouts p JOIN payout_attempts a ON a.payout_id = p.id
               WHERE p.deposit_id IS NOT NULL AND lower(a.tx_hash) = lower($1))
UNION ALL
SELECT 'intent', i.id::text, i.user_id, i.status, coalesce(i.received_amount_usdc, i.expected_amount_usdc), 'USDC',
       NULL, i.created_at
FROM deposit_intents i
WHERE i.id = $2 OR i.user_id = $1
   OR i.id IN (SELECT t.intent_id FROM chain_transfers t WHERE t.intent_id IS NOT NULL AND lower(t.tx_hash) = lower($1))
UNION ALL
SELECT 'transfer', t.id::text, t.user_id, t.status, t.amount_micro, 'USDC', NULL, t.first_seen_at
FROM chain_transfers t
WHERE t.intent_id IS NULL AND t.kind = 'deposit' AND (lower(t.tx_hash) = lower($1) OR t.user_id = $1)
ORDER BY at DESC
LIMIT 100;

-- name: timeline_deposit
SELECT * FROM deposits WHERE id = $1;

-- name: timeline_callbacks
-- Every raw callback about a deposit: attached to it, or naming its CheckoutRequestID or receipt.
SELECT * FROM mpesa_callbacks
WHERE deposit_id = $1 OR checkout_request_id = $2 OR mpesa_receipt = $3
ORDER BY id;

-- name: timeline_jobs
SELECT * FROM jobs WHERE deposit_id = $1 OR intent_id = $2 ORDER BY enqueued_at, id;

-- name: timeline_job_attempts
SELECT * FROM job_attempts WHERE job_id = ANY($1::text[]) ORDER BY started_at, attempt;

-- name: timeline_payouts
SELECT * FROM payouts WHERE deposit_id = $1 ORDER BY id;

-- name: timeline_payout_attempts
SELECT * FROM payout_attempts WHERE payout_id = ANY($1::bigint[]) ORDER BY id;

-- name: timeline_entries
-- Journal entries by exact key or key prefix (LIKE patterns), each with its postings written out.
SELECT e.id, e.idempotency_key, e.kind, e.memo, e.created_at,
       string_agg(a.code || ' ' || p.direction || ' ' || p.amount, ', ' ORDER BY p.id) AS postings
FROM journal_entries e
JOIN postings p ON p.entry_id = e.id
JOIN accounts a ON a.id = p.account_id
WHERE e.idempotency_key = ANY($1::text[]) OR e.idempotency_key LIKE ANY($2::text[])
GROUP BY e.id
ORDER BY e.id;

-- name: timeline_review_items
SELECT * FROM review_items
WHERE deposit_id = $1 OR chain_transfer_id = ANY($2::bigint[]) OR dedupe_key = ANY($3::text[])
ORDER BY id;

-- name: timeline_actions
-- What admins did to a deposit or intent, or to its review items (where proposals for them are recorded).
SELECT * FROM admin_actions
WHERE (target_kind IN ('deposit', 'intent') AND target_id = $1)
   OR (target_kind = 'review_item' AND target_id = ANY($2::text[]))
ORDER BY at, id;

-- name: timeline_intent
SELECT * FROM deposit_intents WHERE id = $1;

-- name: timeline_transfers
SELECT * FROM chain_transfers WHERE intent_id = $1 OR id = $2 ORDER BY block_number, log_index;

-- name: review_open
-- The open review items, oldest first, with what the page needs to offer their actions: the deposit's state,
-- and the user a transfer reached, its status and whether its log is missing from chain now.
SELECT r.*, d.status AS deposit_status, d.confirmed_at IS NOT NULL AS deposit_confirmed, d.user_id AS deposit_user,
       t.user_id AS transfer_user, t.intent_id AS transfer_intent, t.status AS transfer_status,
       t.missing_since IS NOT NULL AS transfer_missing
FROM review_items r
LEFT JOIN deposits d ON d.id = r.deposit_id
LEFT JOIN chain_transfers t ON t.id = r.chain_transfer_id
WHERE r.status = 'open'
ORDER BY r.created_at, r.id;

-- name: money_actions_recent
SELECT * FROM admin_actions WHERE action ~ '^(propose|approve|reject|withdraw)_' ORDER BY at DESC, id DESC LIMIT $1;

-- name: flagged_transfers
-- USDC that reached a deposit address as an exception (BTCPay's invoices): flagged late, unsolicited, underpaid or
-- overpaid, or held for review or reversed; $1 one flag or NULL for all, $2 how many. Each with its intent and its
-- latest review item.
SELECT t.*, i.status AS intent_status, i.expected_amount_usdc, r.id AS review_item_id, r.status AS review_status
FROM chain_transfers t
LEFT JOIN deposit_intents i ON i.id = t.intent_id
LEFT JOIN LATERAL (
    SELECT id, status FROM review_items WHERE chain_transfer_id = t.id ORDER BY id DESC LIMIT 1
) r ON true
WHERE t.kind IN ('deposit', 'too_large')
  AND (($1::text IS NULL AND (t.flags <> '{}' OR t.status IN ('review', 'reversed'))) OR $1 = ANY(t.flags))
ORDER BY t.first_seen_at DESC, t.id DESC
LIMIT $2;

-- name: treasury_address
-- The treasury as our own payouts name it (the API holds no key): the latest payout's sender.
SELECT from_address FROM payouts ORDER BY id DESC LIMIT 1;

-- name: system_balances
SELECT code, asset, balance FROM account_balances WHERE kind <> 'user' ORDER BY asset, code;

-- name: paid_deposits_by_receipts
-- Deposits M-Pesa paid, by receipt (a statement's): id, receipt, shillings received, when M-Pesa paid, status.
SELECT id, mpesa_receipt AS receipt, received_kes, paid_at_mpesa AS paid_at, status
FROM deposits WHERE mpesa_receipt = ANY($1::text[]) AND received_kes IS NOT NULL;

-- name: paid_deposits_between
-- Deposits M-Pesa paid within a statement's period ($1, $2 inclusive).
SELECT id, mpesa_receipt AS receipt, received_kes, paid_at_mpesa AS paid_at, status
FROM deposits
WHERE mpesa_receipt IS NOT NULL AND received_kes IS NOT NULL AND paid_at_mpesa BETWEEN $1 AND $2
ORDER BY paid_at_mpesa
LIMIT 10000;
