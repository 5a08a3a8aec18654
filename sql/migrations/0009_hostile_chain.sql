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

-- A transfer's identity is not its block-level log index, which changes when a reorg mines the same
-- transaction again behind other logs: it is the transaction, the log's content and its order among the
-- identical logs of that transaction (seq; kiota/usdc.py, TransferKey). A log met again at another index moves
-- its row (log_index, block); it is never a second transfer, so never a second credit. Rows recorded twice by
-- the old key (a transaction re-mined at another index) are numbered live ones first: the log on chain
-- matches the row that is not orphaned.
ALTER TABLE chain_transfers ADD COLUMN seq integer NOT NULL DEFAULT 0 CHECK (seq >= 0);
UPDATE chain_transfers t SET seq = n.seq
FROM (SELECT id, row_number() OVER (PARTITION BY chain_id, tx_hash, token_address, from_address, to_address,
                                                 amount_micro
                                    ORDER BY status = 'orphaned', log_index) - 1 AS seq
      FROM chain_transfers) AS n
WHERE t.id = n.id AND n.seq <> 0;
ALTER TABLE chain_transfers DROP CONSTRAINT chain_transfers_chain_id_tx_hash_log_index_key;
CREATE UNIQUE INDEX chain_transfers_identity
    ON chain_transfers (chain_id, tx_hash, token_address, from_address, to_address, amount_micro, seq);
-- The credit's journal entry key (it names the log index of the moment it was credited): a reversal is keyed
-- by it, wherever the log has moved since.
ALTER TABLE chain_transfers ADD COLUMN credit_key text;
UPDATE chain_transfers SET credit_key = 'usdc:' || chain_id || ':' || tx_hash || ':' || log_index
WHERE status = 'credited';
ALTER TABLE chain_transfers ADD CONSTRAINT chain_transfers_credit_key_check
    CHECK ((status IN ('credited', 'reversed')) = (credit_key IS NOT NULL));
-- Consecutive rounds that found a credited transfer missing, its receipt null and its block's height holding
-- another block: a credit is reversed on a null receipt only when two rounds in a row say so.
ALTER TABLE chain_transfers ADD COLUMN gone_rounds smallint NOT NULL DEFAULT 0;
CREATE INDEX chain_transfers_gone_idx ON chain_transfers (chain_id) WHERE gone_rounds > 0;

-- A review item may be about a USDC transfer; its amount may exceed bigint (that may be why it is here).
ALTER TABLE review_items ADD COLUMN chain_transfer_id bigint REFERENCES chain_transfers (id);
ALTER TABLE review_items ADD COLUMN amount_usdc_micro numeric(78, 0);

-- A settled payout (deposit completed, entry booked at its receipt) is final only when its block has the
-- required confirmations; until then the lane looks at its receipts again.
ALTER TABLE payouts ADD COLUMN final_at timestamptz;
-- Payouts settled before this release were settled under the old rule; they are not looked at again.
UPDATE payouts SET final_at = coalesce(settled_at, now()) WHERE status = 'confirmed';
CREATE INDEX payouts_unfinal_idx ON payouts (chain_id, from_address, nonce) WHERE status = 'confirmed' AND final_at IS NULL;
-- The head at which the re-check found a settled payout's block gone: sent again from then, its fees are
-- raised after replace_after_blocks, as a payout never mined.
ALTER TABLE payouts ADD COLUMN out_of_chain_block bigint;
