-- The ledger's deferred checks (0001), the same rules in cheaper queries.
--
-- `ledger_check_entry_has_postings` asked NOT EXISTS (postings of the entry). Without
-- statistics on postings (a new database, or one that grew since its last ANALYZE), the
-- planner may answer an EXISTS with a sequential scan that it expects to stop early; the
-- new entry's postings are the last rows of the table, so it read the whole table for
-- every entry, and kept that plan for the session. A count over the entry's postings
-- cannot stop early, so the index on entry_id is the plan.
--
-- `ledger_check_entry_balanced` ran two queries per posting row (a count, then the
-- per-asset sums); it now reads the entry's postings once for both. Same errors, same
-- SQLSTATE and constraint name.

CREATE OR REPLACE FUNCTION ledger_check_entry_balanced() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    unbalanced text;
    posting_count integer;
BEGIN
    SELECT coalesce(sum(per_asset.n), 0)::integer,
           string_agg(per_asset.asset, ', ' ORDER BY per_asset.asset) FILTER (WHERE per_asset.debit <> per_asset.credit)
    INTO posting_count, unbalanced
    FROM (
        SELECT p.asset, count(*) AS n,
               sum(CASE p.direction WHEN 'D' THEN p.amount ELSE 0 END) AS debit,
               sum(CASE p.direction WHEN 'C' THEN p.amount ELSE 0 END) AS credit
        FROM postings p
        WHERE p.entry_id = NEW.entry_id
        GROUP BY p.asset
    ) AS per_asset;
    IF posting_count < 2 THEN
        RAISE EXCEPTION 'journal entry % has % posting(s); an entry needs at least two',
            NEW.entry_id, posting_count USING ERRCODE = '23514', CONSTRAINT = 'entry_balanced';
    END IF;
    IF unbalanced IS NOT NULL THEN
        RAISE EXCEPTION 'journal entry % does not balance in %', NEW.entry_id, unbalanced
            USING ERRCODE = '23514', CONSTRAINT = 'entry_balanced';
    END IF;
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION ledger_check_entry_has_postings() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF (SELECT count(*) FROM postings p WHERE p.entry_id = NEW.id) = 0 THEN
        RAISE EXCEPTION 'journal entry % has no postings', NEW.id
            USING ERRCODE = '23514', CONSTRAINT = 'entry_balanced';
    END IF;
    RETURN NULL;
END $$;
