-- name: insert_entry
-- Returns the new entry's id, or no row when the idempotency key was used before.
INSERT INTO journal_entries (idempotency_key, kind, memo)
VALUES ($1, $2, $3)
ON CONFLICT (idempotency_key) DO NOTHING
RETURNING id;

-- name: insert_postings
-- Accounts are named by code; the join also checks each posting's asset against its account.
INSERT INTO postings (entry_id, account_id, asset, direction, amount)
SELECT $1, a.id, a.asset, p.direction, p.amount
FROM unnest($2::text[], $3::text[], $4::text[], $5::bigint[])
     AS p (account_code, asset, direction, amount)
JOIN accounts a ON a.code = p.account_code AND a.asset = p.asset;

-- name: entry_by_key
SELECT e.id, e.kind, a.code AS account_code, p.asset, p.direction, p.amount
FROM journal_entries e
JOIN postings p ON p.entry_id = e.id
JOIN accounts a ON a.id = p.account_id
WHERE e.idempotency_key = $1
ORDER BY p.id;

-- name: balance_by_code
SELECT balance FROM account_balances WHERE code = $1;

-- name: user_balances
SELECT asset, balance FROM account_balances WHERE user_id = $1 AND kind = 'user';

-- name: balance_from_postings
-- The long way round, for tests that prove the view equals the sum of postings.
SELECT COALESCE(sum(CASE WHEN p.direction = a.normal_side THEN p.amount ELSE -p.amount END), 0)::bigint
FROM accounts a JOIN postings p ON p.account_id = a.id
WHERE a.code = $1;
