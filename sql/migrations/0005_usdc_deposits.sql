-- USDC deposits on Base: one ingester writes every USDC transfer to a deposit
-- address here; crediting and intents are derived from this table and the rounds.

CREATE TABLE chain_transfers (
    id            bigserial PRIMARY KEY,
    chain_id      bigint NOT NULL,
    tx_hash       text NOT NULL,
    log_index     integer NOT NULL,
    block_number  bigint NOT NULL,
    block_hash    text NOT NULL,
    token_address text NOT NULL,
    from_address  text NOT NULL,
    to_address    text NOT NULL,
    amount_micro  numeric(78, 0) NOT NULL CHECK (amount_micro >= 0),
    user_id       text NOT NULL REFERENCES users (id),
    -- deposit: credit it; treasury / own_payout: our own money moving, never a deposit
    kind          text NOT NULL CHECK (kind IN ('deposit', 'treasury', 'own_payout')),
    status        text NOT NULL DEFAULT 'seen' CHECK (status IN ('seen', 'orphaned', 'credited')),
    intent_id     uuid,
    flags         text[] NOT NULL DEFAULT '{}',
    first_seen_at timestamptz NOT NULL DEFAULT now(),
    credited_at   timestamptz,
    UNIQUE (chain_id, tx_hash, log_index)
);
CREATE INDEX chain_transfers_open_idx ON chain_transfers (chain_id, block_number) WHERE status = 'seen';
CREATE INDEX chain_transfers_user_idx ON chain_transfers (user_id);

CREATE TABLE chain_cursors (
    chain_id   bigint PRIMARY KEY,
    next_block bigint NOT NULL CHECK (next_block >= 0),
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE scan_rounds (
    id          bigserial PRIMARY KEY,
    chain_id    bigint NOT NULL,
    from_block  bigint NOT NULL,
    to_block    bigint NOT NULL,
    head        bigint NOT NULL,
    rpc_calls   integer NOT NULL,
    transfers   integer NOT NULL,
    started_at  timestamptz NOT NULL,
    finished_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE deposit_intents (
    id                   uuid PRIMARY KEY,
    user_id              text NOT NULL REFERENCES users (id),
    status               text NOT NULL CHECK (status IN ('awaiting_payment', 'confirming', 'completed', 'expired')),
    deposit_address      text NOT NULL,
    expected_amount_usdc bigint CHECK (expected_amount_usdc > 0),
    received_amount_usdc bigint,
    transfer_id          bigint REFERENCES chain_transfers (id),
    checks               integer NOT NULL DEFAULT 0,
    end_reason           text CHECK (end_reason IN ('confirmed', 'ttl', 'max_checks')),
    flags                text[] NOT NULL DEFAULT '{}',
    created_at           timestamptz NOT NULL DEFAULT now(),
    expires_at           timestamptz NOT NULL,
    ended_at             timestamptz,
    CHECK ((status IN ('completed', 'expired')) = (end_reason IS NOT NULL))
);
CREATE UNIQUE INDEX deposit_intents_one_open_per_user ON deposit_intents (user_id)
    WHERE status IN ('awaiting_payment', 'confirming');
ALTER TABLE chain_transfers ADD CONSTRAINT chain_transfers_intent_fk FOREIGN KEY (intent_id) REFERENCES deposit_intents (id);
