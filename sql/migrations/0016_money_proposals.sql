-- The two-person rule for money (issue 13, item 4): crediting a user from a review item, confirming a deposit's
-- M-Pesa payment by hand, or writing suspense off is proposed by one operator and approved by another. The
-- database refuses an approval by the proposer itself, a second live proposal for one target, and a second
-- approved one: whatever a service gets wrong, money moves once and by two people.

-- Money written off: suspense nobody will claim, moved out of suspense by a balanced entry (kiota/ledger.py).
ALTER TABLE accounts DROP CONSTRAINT accounts_kind_check;
ALTER TABLE accounts ADD CONSTRAINT accounts_kind_check CHECK (kind IN (
    'user', 'treasury', 'custody', 'mpesa_float', 'customer_pending', 'fx', 'suspense', 'written_off'));
INSERT INTO accounts (code, kind, asset, normal_side) VALUES
    ('written_off:KES',  'written_off', 'KES',  'C'),
    ('written_off:USDC', 'written_off', 'USDC', 'C');

CREATE TABLE money_proposals (
    id             bigserial PRIMARY KEY,
    action         text NOT NULL CHECK (action IN ('confirm_deposit', 'credit_user', 'write_off')),
    review_item_id bigint REFERENCES review_items (id),
    deposit_id     uuid REFERENCES deposits (id),
    user_id        text REFERENCES users (id),
    asset          text REFERENCES assets (code),
    amount         numeric(78, 0) CHECK (amount > 0),
    note           text NOT NULL DEFAULT '' CHECK (length(note) <= 1000),
    status         text NOT NULL DEFAULT 'proposed' CHECK (status IN ('proposed', 'approved', 'rejected', 'withdrawn')),
    proposed_by    text NOT NULL,
    proposed_at    timestamptz NOT NULL DEFAULT now(),
    approved_by    text,
    closed_by      text,                        -- who approved, rejected or withdrew it
    closed_at      timestamptz,
    close_note     text CHECK (length(close_note) <= 1000),
    entry_id       bigint REFERENCES journal_entries (id),
    CONSTRAINT money_proposals_two_people CHECK (approved_by IS NULL OR approved_by <> proposed_by),
    CONSTRAINT money_proposals_approved_by CHECK ((status = 'approved') = (approved_by IS NOT NULL)),
    CONSTRAINT money_proposals_closed CHECK ((status = 'proposed') = (closed_at IS NULL)),
    CONSTRAINT money_proposals_shape CHECK (CASE action
        WHEN 'confirm_deposit' THEN deposit_id IS NOT NULL
        WHEN 'credit_user' THEN review_item_id IS NOT NULL AND user_id IS NOT NULL AND amount IS NOT NULL
        ELSE review_item_id IS NOT NULL AND amount IS NOT NULL END)
);
-- One live proposal per review item and per deposit, and at most one ever approved.
CREATE UNIQUE INDEX money_proposals_one_open_per_item ON money_proposals (review_item_id)
    WHERE status = 'proposed' AND review_item_id IS NOT NULL;
CREATE UNIQUE INDEX money_proposals_one_approved_per_item ON money_proposals (review_item_id)
    WHERE status = 'approved' AND review_item_id IS NOT NULL;
CREATE UNIQUE INDEX money_proposals_one_open_per_deposit ON money_proposals (deposit_id)
    WHERE status = 'proposed' AND deposit_id IS NOT NULL;
CREATE UNIQUE INDEX money_proposals_one_approved_per_deposit ON money_proposals (deposit_id)
    WHERE status = 'approved' AND deposit_id IS NOT NULL;
CREATE INDEX money_proposals_open_idx ON money_proposals (proposed_at) WHERE status = 'proposed';
