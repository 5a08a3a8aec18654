-- Issue 13's adversarial review, in the schema: one person is one name whatever its case or spaces, and the
-- USDC a review item would credit is known to be on chain (or not) as the scanner last saw it.

-- One person, one name: "Alice", "alice" and "alice " are one person for the two-person rule and for accounts.
-- kiota/review_actions.py `same_person` says the same in Python (str.strip().casefold(); names of accounts are
-- ASCII, so lower() agrees with casefold() on them).
CREATE FUNCTION person_key(name text) RETURNS text
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
AS $$ SELECT lower(btrim(name, E' \t\r\n\v\f')) $$;

-- Accounts whose names are one person's: the one kept is the enabled one, else the oldest; each other is
-- disabled and renamed `<name>.dup<id>` (its name stays within the table's CHECK), so the migration never fails
-- on existing rows and no two enabled accounts share a person. Its past actions keep the old spelling, which
-- names the kept account's person: the two-person rule counts them as one, the safe way round.
WITH ranked AS (
    SELECT id, row_number() OVER (PARTITION BY person_key(name)
                                  ORDER BY disabled_at IS NULL DESC, created_at, id) AS n
    FROM operators
)
UPDATE operators o
SET name = left(o.name, 64 - length('.dup' || o.id)) || '.dup' || o.id,
    disabled_at = coalesce(o.disabled_at, now())
FROM ranked r
WHERE r.id = o.id AND r.n > 1;
CREATE UNIQUE INDEX operators_one_per_person ON operators (person_key(name));

-- The two-person rule in the database compares persons, not bytes. NOT VALID first: a proposal approved under
-- the old byte comparison by another spelling of its proposer must not stop the migration; it is then checked,
-- and one that fails is said in a WARNING (and stays as history) while every new approval is checked.
ALTER TABLE money_proposals DROP CONSTRAINT money_proposals_two_people;
ALTER TABLE money_proposals ADD CONSTRAINT money_proposals_two_people
    CHECK (approved_by IS NULL OR person_key(approved_by) <> person_key(proposed_by)) NOT VALID;
DO $$
BEGIN
    ALTER TABLE money_proposals VALIDATE CONSTRAINT money_proposals_two_people;
EXCEPTION WHEN check_violation THEN
    RAISE WARNING 'a money proposal was approved by its own proposer under another spelling: see money_proposals';
END $$;

-- A transfer held for a person (status 'review': never booked; 'reversed': taken back into suspense) whose USDC
-- is not confirmed on chain now: its log was missing from a rescan of its block, or a reorg moved it to a block
-- not yet confirmed, or it was reversed and has not come back. NULL: on chain, confirmed. A review item
-- credits only USDC that is on chain (kiota/review_rules.py `usdc_here`); a write-off of USDC that is gone
-- takes it out of custody (kiota/ledger.py `review_write_off`).
ALTER TABLE chain_transfers ADD COLUMN missing_since timestamptz;
UPDATE chain_transfers t SET missing_since = coalesce(t.reversed_at, now())
WHERE t.status = 'reversed'
  AND NOT EXISTS (SELECT 1 FROM review_items r WHERE r.chain_transfer_id = t.id AND r.kind = 'usdc_reappeared');
CREATE INDEX chain_transfers_held_idx ON chain_transfers (chain_id, block_number) WHERE status IN ('review', 'reversed');
