-- M-Pesa deposits, raw callbacks, the job history, and the payout lane.

CREATE TABLE deposits (
    id                  uuid PRIMARY KEY,
    user_id             text NOT NULL REFERENCES users (id),
    kind                text NOT NULL DEFAULT 'mpesa' CHECK (kind = 'mpesa'),
    status              text NOT NULL CHECK (status IN ('pending', 'processing', 'completed', 'failed', 'needs_review')),
    amount_kes          bigint NOT NULL CHECK (amount_kes > 0),
    kes_per_usd         numeric NOT NULL CHECK (kes_per_usd > 0),
    amount_usdc         bigint NOT NULL CHECK (amount_usdc >= 0),     -- micro-units, fixed at initiate
    phone_masked        text NOT NULL,
    checkout_request_id text UNIQUE,
    merchant_request_id text,
    mpesa_receipt       text UNIQUE,
    received_kes        bigint CHECK (received_kes > 0),
    paid_at_mpesa       timestamptz,
    tx_hash             text,
    failure_code        text,
    failure_reason      text,
    review_reason       text,
    query_attempts      integer NOT NULL DEFAULT 0,
    next_query_at       timestamptz,
    processing_since    timestamptz,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    completed_at        timestamptz,
    CHECK ((status = 'completed') = (completed_at IS NOT NULL AND tx_hash IS NOT NULL))
);
CREATE INDEX deposits_user_created_idx ON deposits (user_id, created_at DESC);
CREATE INDEX deposits_open_idx ON deposits (status, updated_at) WHERE status IN ('pending', 'processing', 'needs_review');

-- Every callback that came with the right token, exactly as received, even malformed ones.
CREATE TABLE mpesa_callbacks (
    id                  bigserial PRIMARY KEY,
    received_at         timestamptz NOT NULL DEFAULT now(),
    remote_addr         text,
    raw_body            text NOT NULL,
    parse_error         text,
    checkout_request_id text,
    merchant_request_id text,
    result_code         integer,
    result_desc         text,
    amount_kes          bigint,
    mpesa_receipt       text,
    transaction_at      timestamptz,
    phone_masked        text,
    deposit_id          uuid REFERENCES deposits (id),
    disposition         text NOT NULL CHECK (disposition IN (
                            'malformed', 'succeeded', 'failed', 'duplicate', 'review', 'unknown_failure'))
);
CREATE INDEX mpesa_callbacks_checkout_idx ON mpesa_callbacks (checkout_request_id);

-- Money whose owner is unclear, or anything a person must look at. Never credited automatically.
CREATE TABLE review_items (
    id          bigserial PRIMARY KEY,
    kind        text NOT NULL,
    dedupe_key  text NOT NULL UNIQUE,
    deposit_id  uuid REFERENCES deposits (id),
    callback_id bigint REFERENCES mpesa_callbacks (id),
    amount_kes  bigint,
    reason      text NOT NULL,
    status      text NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'resolved')),
    created_at  timestamptz NOT NULL DEFAULT now(),
    resolved_at timestamptz,
    resolution  text
);

-- The durable job history: every job names what it serves; Redis only carries the id.
CREATE TABLE jobs (
    id          text PRIMARY KEY,
    function    text NOT NULL,
    deposit_id  uuid REFERENCES deposits (id),
    status      text NOT NULL CHECK (status IN ('queued', 'running', 'retrying', 'blocked', 'succeeded', 'failed')),
    failures    integer NOT NULL DEFAULT 0,   -- real failures; a killed worker is not one
    runs        integer NOT NULL DEFAULT 0,   -- times a worker started it
    last_error  text,
    blocked_reason text,
    next_run_at timestamptz,
    first_run_at timestamptz,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz
);
CREATE INDEX jobs_open_idx ON jobs (status, next_run_at) WHERE status IN ('queued', 'running', 'retrying', 'blocked');
CREATE INDEX jobs_deposit_idx ON jobs (deposit_id);

-- The payout lane: one row of guards, a nonce counter per treasury, payouts and their attempts.
CREATE TABLE payout_guards (
    id                    boolean PRIMARY KEY DEFAULT true CHECK (id),
    kill_switch           boolean NOT NULL DEFAULT false,
    lane_paused           boolean NOT NULL DEFAULT false,
    pause_reason          text,
    per_deposit_max_micro bigint NOT NULL DEFAULT 2000000000 CHECK (per_deposit_max_micro > 0),   -- 2,000 USDC
    hourly_cap_micro      bigint NOT NULL DEFAULT 20000000000 CHECK (hourly_cap_micro > 0),       -- 20,000 USDC
    daily_cap_micro       bigint NOT NULL DEFAULT 100000000000 CHECK (daily_cap_micro > 0),       -- 100,000 USDC
    updated_at            timestamptz NOT NULL DEFAULT now(),
    updated_by            text
);
INSERT INTO payout_guards DEFAULT VALUES;

CREATE TABLE treasury_nonces (
    chain_id   bigint NOT NULL,
    address    text NOT NULL,
    next_nonce bigint NOT NULL CHECK (next_nonce >= 0),
    PRIMARY KEY (chain_id, address)
);

CREATE TABLE payouts (
    id            bigserial PRIMARY KEY,
    deposit_id    uuid REFERENCES deposits (id),
    purpose       text NOT NULL DEFAULT 'deposit' CHECK (purpose IN ('deposit', 'nonce_filler')),
    chain_id      bigint NOT NULL,
    token_address text NOT NULL,
    from_address  text NOT NULL,
    to_address    text NOT NULL,
    amount_micro  bigint NOT NULL CHECK (amount_micro >= 0),
    nonce         bigint,
    status        text NOT NULL CHECK (status IN ('created', 'signed', 'confirmed', 'reverted', 'cancelled')),
    tx_hash       text,
    block_number  bigint,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    settled_at    timestamptz,
    UNIQUE (chain_id, from_address, nonce)
);
-- One live payout per deposit: a reverted or cancelled one may be followed by another.
CREATE UNIQUE INDEX payouts_one_live_per_deposit ON payouts (deposit_id) WHERE status NOT IN ('reverted', 'cancelled');

-- Each signed transaction is stored BEFORE it is broadcast, so a crash can always
-- re-send or recognise it; a receipt for any attempt settles the payout.
CREATE TABLE payout_attempts (
    id                       bigserial PRIMARY KEY,
    payout_id                bigint NOT NULL REFERENCES payouts (id),
    nonce                    bigint NOT NULL,
    tx_hash                  text NOT NULL UNIQUE,
    raw_tx                   text NOT NULL,
    max_fee_per_gas          numeric NOT NULL,
    max_priority_fee_per_gas numeric NOT NULL,
    gas_limit                bigint NOT NULL,
    created_at               timestamptz NOT NULL DEFAULT now(),
    broadcast_at             timestamptz,
    broadcast_block          bigint
);
CREATE INDEX payout_attempts_payout_idx ON payout_attempts (payout_id);

-- The user's on-chain USDC at their deposit address, as last read after a credit.
CREATE TABLE wallet_balances (
    user_id      text PRIMARY KEY REFERENCES users (id),
    usdc_micro   bigint NOT NULL CHECK (usdc_micro >= 0),
    block_number bigint NOT NULL,
    updated_at   timestamptz NOT NULL DEFAULT now()
);
