-- The hourly and daily payout caps (kiota/payouts/guards.py) sum what was signed in their window, four times
-- per signing (twice before it, twice under the caps' lock). Summed row by row, that grows with the volume: with
-- 1,000,000 payouts signed in the last day the daily sum took 156 ms (measured, PostgreSQL 15), so a lane would
-- spend most of its time there, holding the caps' lock that every lane waits for. A running total per minute of
-- signing keeps a sum to at most 1,441 index rows plus the payouts of the window's first, partial minute
-- (sql/queries/payouts.sql, paid_out_since: the same figure as before, to the micro-unit).
--
-- Kept by statement triggers on payouts, in the writing transaction: a payout counts its amount in the minute of
-- its signed_at while it is signed, being cancelled or confirmed, as the old sum did. A change that keeps what a row
-- counts (settled, final, re-signed after a reorg) writes nothing here. Old minutes are never read past a day; at
-- 1,440 rows a day per chain they are left in place.
CREATE TABLE payout_cap_minutes (
    chain_id     bigint NOT NULL,
    minute       timestamptz NOT NULL,
    amount_micro bigint NOT NULL,
    PRIMARY KEY (chain_id, minute)
);

CREATE FUNCTION payout_cap_counts(status text, signed_at timestamptz) RETURNS boolean
LANGUAGE sql IMMUTABLE AS $$
    SELECT signed_at IS NOT NULL AND status IN ('signed', 'cancelling', 'confirmed')
$$;

-- Each statement's changes, netted per minute and applied in key order (two statements touching the same minutes
-- lock them in the same order). A signing holds the guards' row FOR SHARE while it writes the current minute's
-- row: a transaction that pauses the lanes and changes a payout takes the guards' row first (settlement.py).
--
-- Writes that fire no trigger (session_replication_role = replica, a data-only restore with triggers disabled)
-- leave the totals behind; rebuild them with the backfill at the end of this file after
-- `DELETE FROM payout_cap_minutes` (README, Runbook).
CREATE FUNCTION payout_cap_minutes_track() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO payout_cap_minutes AS t (chain_id, minute, amount_micro)
        SELECT chain_id, date_trunc('minute', signed_at), sum(amount_micro) FROM new_rows
        WHERE payout_cap_counts(status, signed_at) GROUP BY 1, 2 HAVING sum(amount_micro) <> 0 ORDER BY 1, 2
        ON CONFLICT (chain_id, minute) DO UPDATE SET amount_micro = t.amount_micro + excluded.amount_micro;
    ELSIF TG_OP = 'UPDATE' THEN
        INSERT INTO payout_cap_minutes AS t (chain_id, minute, amount_micro)
        SELECT chain_id, minute, sum(amount) FROM (
            SELECT chain_id, date_trunc('minute', signed_at) AS minute, amount_micro AS amount FROM new_rows
            WHERE payout_cap_counts(status, signed_at)
            UNION ALL
            SELECT chain_id, date_trunc('minute', signed_at), -amount_micro FROM old_rows
            WHERE payout_cap_counts(status, signed_at)
        ) AS changes
        GROUP BY 1, 2 HAVING sum(amount) <> 0 ORDER BY 1, 2
        ON CONFLICT (chain_id, minute) DO UPDATE SET amount_micro = t.amount_micro + excluded.amount_micro;
    ELSE
        INSERT INTO payout_cap_minutes AS t (chain_id, minute, amount_micro)
        SELECT chain_id, date_trunc('minute', signed_at), -sum(amount_micro) FROM old_rows
        WHERE payout_cap_counts(status, signed_at) GROUP BY 1, 2 HAVING sum(amount_micro) <> 0 ORDER BY 1, 2
        ON CONFLICT (chain_id, minute) DO UPDATE SET amount_micro = t.amount_micro + excluded.amount_micro;
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER payouts_cap_minutes_insert AFTER INSERT ON payouts
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION payout_cap_minutes_track();
CREATE TRIGGER payouts_cap_minutes_update AFTER UPDATE ON payouts
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION payout_cap_minutes_track();
CREATE TRIGGER payouts_cap_minutes_delete AFTER DELETE ON payouts
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION payout_cap_minutes_track();

-- TRUNCATE fires no row or statement trigger above: it would leave the totals counting payouts that are gone.
CREATE FUNCTION payouts_refuse_truncate() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'payouts are the record of money sent: TRUNCATE is refused (the caps'' totals would be wrong)'
        USING ERRCODE = '23514', CONSTRAINT = 'payouts_no_truncate';
END $$;
CREATE TRIGGER payouts_no_truncate BEFORE TRUNCATE ON payouts
    FOR EACH STATEMENT EXECUTE FUNCTION payouts_refuse_truncate();

-- The payouts signed before this migration (the triggers above hold payouts locked until it commits).
INSERT INTO payout_cap_minutes (chain_id, minute, amount_micro)
SELECT chain_id, date_trunc('minute', signed_at), sum(amount_micro) FROM payouts
WHERE payout_cap_counts(status, signed_at) GROUP BY 1, 2;
