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

-- name: insert_entries
-- Many entries and their postings in one statement (as insert_entry + insert_postings, set-based).
-- Returns the entries created, each with how many postings it got (fewer than sent means an unknown
-- account or a wrong asset); a key used before creates nothing and returns no row.
WITH new_entries AS (
    INSERT INTO journal_entries (idempotency_key, kind, memo)
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[])
    ON CONFLICT (idempotency_key) DO NOTHING
    RETURNING id, idempotency_key
), new_postings AS (
    INSERT INTO postings (entry_id, account_id, asset, direction, amount)
    SELECT e.id, a.id, a.asset, p.direction, p.amount
    FROM unnest($4::text[], $5::text[], $6::text[], $7::text[], $8::bigint[]) WITH ORDINALITY
         AS p (entry_key, account_code, asset, direction, amount, n)
    JOIN new_entries e ON e.idempotency_key = p.entry_key
    JOIN accounts a ON a.code = p.account_code AND a.asset = p.asset
    ORDER BY p.n
    RETURNING entry_id
)
SELECT e.idempotency_key, e.id, coalesce(n.postings, 0) AS postings
FROM new_entries e
LEFT JOIN (SELECT entry_id, count(*) AS postings FROM new_postings GROUP BY entry_id) AS n ON n.entry_id = e.id;

-- name: entries_by_keys
SELECT e.id, e.idempotency_key, a.code AS account_code, p.asset, p.direction, p.amount
FROM journal_entries e
JOIN postings p ON p.entry_id = e.id
JOIN accounts a ON a.id = p.account_id
WHERE e.idempotency_key = ANY($1::text[])
ORDER BY p.id;

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
