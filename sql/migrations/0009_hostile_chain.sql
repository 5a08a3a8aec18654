-- The chain cannot stop crediting (issue 11): odd logs are recorded and never credited, what cannot be
-- credited goes to review, a credited deposit whose log a reorg removed is reversed into suspense, and a
-- payout is final only at the required confirmations. Expand only: old workers keep running on it.

-- What a log to a deposit address is. Credited: deposit (a mint or a third party's transferFrom is USDC
-- arriving all the same). Never credited: treasury / own_payout (our own money moving); zero_value and
-- self_transfer (they add nothing); foreign_contract (not emitted by the token contract: a provider ignored our
-- address filter); too_large (more than is credited automatically: sent to review at its confirmations).
ALTER TABLE chain_transfers DROP CONSTRAINT chain_transfers_kind_check;
ALTER TABLE chain_transfers ADD CONSTRAINT chain_transfers_kind_check CHECK (kind IN (
    'deposit', 'treasury', 'own_payout', 'zero_value', 'self_transfer', 'foreign_contract', 'too_large'));

-- review: a person must look (too large, or its credit failed), nothing credited; reversed: credited, then
-- a reorg removed its log, and the credit was taken back into suspense:USDC. Neither is credited again
-- automatically, even if its log comes back.
ALTER TABLE chain_transfers DROP CONSTRAINT chain_transfers_status_check;
ALTER TABLE chain_transfers ADD CONSTRAINT chain_transfers_status_check CHECK (status IN (
    'seen', 'orphaned', 'credited', 'review', 'reversed'));
ALTER TABLE chain_transfers ADD COLUMN reversed_at timestamptz;
-- Each round compares the credited transfers of the rescanned blocks with its answer, and looks for
-- reversed transfers whose log is back.
CREATE INDEX chain_transfers_credited_idx ON chain_transfers (chain_id, block_number) WHERE status = 'credited';
CREATE INDEX chain_transfers_reversed_idx ON chain_transfers (chain_id) WHERE status = 'reversed';

-- A review item may be about a USDC transfer; its amount may exceed bigint (that may be why it is here).
ALTER TABLE review_items ADD COLUMN chain_transfer_id bigint REFERENCES chain_transfers (id);
ALTER TABLE review_items ADD COLUMN amount_usdc_micro numeric(78, 0);

-- A settled payout (deposit completed, entry booked at its receipt) is final only when its block has the
-- required confirmations; until then the lane looks at its receipts again.
ALTER TABLE payouts ADD COLUMN final_at timestamptz;
-- Payouts settled before this release were settled under the old rule; they are not looked at again.
UPDATE payouts SET final_at = coalesce(settled_at, now()) WHERE status = 'confirmed';
CREATE INDEX payouts_unfinal_idx ON payouts (chain_id, from_address, nonce) WHERE status = 'confirmed' AND final_at IS NULL;
