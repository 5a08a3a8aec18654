-- The payout lane, second part. The nonce filler: a payout given up on (its deposit sent to review) while its nonce
-- is not yet used on chain is 'cancelling': the lane fills that nonce with a zero-value
-- send to the treasury itself, so later payouts are not stuck behind a gap. Whichever
-- transaction the chain mines at that nonce decides: the filler (the payout becomes
-- 'cancelled'), or the payout itself after all (it is settled: the money moved).

ALTER TABLE payouts DROP CONSTRAINT payouts_status_check;
ALTER TABLE payouts ADD CONSTRAINT payouts_status_check
    CHECK (status IN ('created', 'signed', 'cancelling', 'confirmed', 'reverted', 'cancelled'));
ALTER TABLE payouts ADD COLUMN cancel_reason text;

-- An attempt is either the payout's own transfer or a filler for its nonce.
ALTER TABLE payout_attempts ADD COLUMN kind text NOT NULL DEFAULT 'payout' CHECK (kind IN ('payout', 'filler'));

CREATE INDEX payouts_cancelling_idx ON payouts (chain_id, from_address, nonce) WHERE status = 'cancelling';

-- The lane's owner pays the other processing deposits in its turn: find them without a scan.
CREATE INDEX deposits_processing_idx ON deposits (processing_since) WHERE status = 'processing';
-- ...and re-sends the signed, unsettled payouts in nonce order.
CREATE INDEX payouts_signed_idx ON payouts (chain_id, from_address, nonce) WHERE status = 'signed';
CREATE INDEX payouts_deposit_idx ON payouts (deposit_id);
