-- A success callback is believed only once Daraja's STK query confirms it, and the payout
-- caps count payouts by the time they were signed.
--
-- Confirmation (kiota/confirm.py): before a deposit's payout is signed, the completion job
-- asks the STK query about its CheckoutRequestID. `confirmed_at` is set once, by the query
-- (ResultCode 0), by the setting (MPESA_CONFIRM_SUCCESS=off), or by an operator who checked
-- the M-Pesa statement (`kiota ops confirm`); `confirmed_by` says which. The payout lane signs
-- only confirmed deposits, its own and the companions it pays in the same turn.
--
-- Deposits already `processing` when this runs are left unconfirmed on purpose: most were
-- made processing by a callback, which proves nothing by itself, so the new release's
-- completion job confirms each with the STK query before paying it (one query each; a
-- deposit the query had recovered answers 0 again). A processing deposit whose payout was
-- already signed is the exception: its transaction is out (the lane keeps re-sending it), so
-- asking now could only send paid money to review; it is marked `signed_before_confirmation`.
--
-- The database itself refuses to sign (give a nonce to) a payout whose deposit is not
-- confirmed, whichever release asks: the previous release's workers, still running for a
-- minute during this deploy, would otherwise pay a callback's success unconfirmed. Their
-- attempt fails and sends that deposit to review (nothing paid); `kiota ops retry` then
-- confirms it with the STK query and pays it. Stop the worker before deploying this release
-- to avoid that.

ALTER TABLE deposits ADD COLUMN confirmed_at timestamptz;
ALTER TABLE deposits ADD COLUMN confirmed_by text;            -- stk_query | setting | operator:<name>
ALTER TABLE deposits ADD COLUMN confirm_started_at timestamptz; -- the first query; the bound runs from here
ALTER TABLE deposits ADD COLUMN confirm_attempts integer NOT NULL DEFAULT 0;
ALTER TABLE deposits ADD COLUMN confirm_answer text;          -- the query's last answer, as operators read it

-- Caps: the hour and the day a payout counts in start when it is signed (its nonce is given),
-- not when its row was created; a backlog of old 'created' rows would otherwise drain past a
-- cap the moment it is signed. The database stamps it, whichever release signs.
ALTER TABLE payouts ADD COLUMN signed_at timestamptz;

UPDATE deposits d
SET confirmed_at = now(), confirmed_by = 'signed_before_confirmation',
    confirm_answer = 'its payout was signed before successes were confirmed (migration 0010)'
WHERE d.status = 'processing'
  AND EXISTS (SELECT 1 FROM payouts p WHERE p.deposit_id = d.id AND p.nonce IS NOT NULL);

CREATE FUNCTION payouts_stamp_signed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM deposits WHERE id = NEW.deposit_id AND confirmed_at IS NOT NULL) THEN
        RAISE EXCEPTION 'payout % of deposit %: its M-Pesa success is not confirmed', NEW.id, NEW.deposit_id
            USING ERRCODE = 'check_violation';
    END IF;
    NEW.signed_at := coalesce(NEW.signed_at, now());
    RETURN NEW;
END $$;

CREATE TRIGGER payouts_stamp_signed
    BEFORE UPDATE OF nonce ON payouts
    FOR EACH ROW WHEN (OLD.nonce IS NULL AND NEW.nonce IS NOT NULL)
    EXECUTE FUNCTION payouts_stamp_signed();

-- Payouts signed before this migration: their first attempt was stored in the signing transaction.
UPDATE payouts p
SET signed_at = coalesce((SELECT min(a.created_at) FROM payout_attempts a WHERE a.payout_id = p.id), p.updated_at)
WHERE p.nonce IS NOT NULL AND p.signed_at IS NULL;

CREATE INDEX payouts_signed_at_idx ON payouts (chain_id, signed_at) WHERE signed_at IS NOT NULL;
