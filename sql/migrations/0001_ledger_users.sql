-- Foundation: users with their deposit addresses, the double-entry ledger, and
-- Idempotency-Key records. Forward-only; later migrations expand, then contract.

CREATE TABLE users (
    id              text PRIMARY KEY CHECK (length(id) BETWEEN 1 AND 255),
    address_index   integer NOT NULL UNIQUE CHECK (address_index >= 0),
    deposit_address text NOT NULL UNIQUE CHECK (deposit_address ~ '^0x[0-9a-fA-F]{40}$'),
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX users_deposit_address_lower_key ON users (lower(deposit_address));

-- Indexes come from the database and are never handed out twice, even when an
-- insert loses a race and the value is skipped: an address is never reused.
CREATE SEQUENCE user_address_index_seq AS integer MINVALUE 0 START WITH 0;

CREATE TABLE assets (
    code     text PRIMARY KEY,
    decimals integer NOT NULL CHECK (decimals BETWEEN 0 AND 18)
);
INSERT INTO assets (code, decimals) VALUES ('KES', 0), ('USDC', 6);

-- normal_side says which side increases the balance: 'D' for what we hold
-- (treasury, custody, M-Pesa float), 'C' for what we owe (users, pending).
CREATE TABLE accounts (
    id          bigserial PRIMARY KEY,
    code        text NOT NULL UNIQUE,
    kind        text NOT NULL CHECK (kind IN (
                    'user', 'treasury', 'custody', 'mpesa_float', 'customer_pending', 'fx', 'suspense')),
    user_id     text REFERENCES users (id),
    asset       text NOT NULL REFERENCES assets (code),
    normal_side char(1) NOT NULL CHECK (normal_side IN ('D', 'C')),
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (id, asset),
    CHECK ((kind = 'user') = (user_id IS NOT NULL))
);
CREATE UNIQUE INDEX accounts_one_per_user_asset ON accounts (user_id, asset) WHERE kind = 'user';

INSERT INTO accounts (code, kind, asset, normal_side) VALUES
    ('treasury:USDC',         'treasury',         'USDC', 'D'),  -- the hot wallet's USDC on Base
    ('custody:USDC',          'custody',          'USDC', 'D'),  -- USDC at users' deposit addresses
    ('mpesa_float:KES',       'mpesa_float',      'KES',  'D'),  -- shillings in our paybill
    ('customer_pending:KES',  'customer_pending', 'KES',  'C'),  -- received, not yet converted
    ('fx:KES',                'fx',               'KES',  'C'),  -- conversion desk, KES leg
    ('fx:USDC',               'fx',               'USDC', 'C'),  -- conversion desk, USDC leg
    ('suspense:KES',          'suspense',         'KES',  'C'),  -- received, owner unclear: review
    ('suspense:USDC',         'suspense',         'USDC', 'C');

CREATE TABLE journal_entries (
    id              bigserial PRIMARY KEY,
    idempotency_key text NOT NULL UNIQUE CHECK (length(idempotency_key) BETWEEN 1 AND 200),
    kind            text NOT NULL,
    memo            text,
    created_at      timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE postings (
    id         bigserial PRIMARY KEY,
    entry_id   bigint NOT NULL REFERENCES journal_entries (id),
    account_id bigint NOT NULL,
    asset      text NOT NULL,
    direction  char(1) NOT NULL CHECK (direction IN ('D', 'C')),
    amount     bigint NOT NULL CHECK (amount > 0),
    FOREIGN KEY (account_id, asset) REFERENCES accounts (id, asset)
);
CREATE INDEX postings_entry_id_idx ON postings (entry_id);
CREATE INDEX postings_account_id_idx ON postings (account_id);

-- The database itself refuses an entry that does not balance per asset. Deferred to
-- commit so that an entry's postings can be inserted one by one.
CREATE FUNCTION ledger_check_entry_balanced() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    unbalanced text;
    posting_count integer;
BEGIN
    SELECT count(*) INTO posting_count FROM postings WHERE entry_id = NEW.entry_id;
    IF posting_count < 2 THEN
        RAISE EXCEPTION 'journal entry % has % posting(s); an entry needs at least two',
            NEW.entry_id, posting_count USING ERRCODE = '23514', CONSTRAINT = 'entry_balanced';
    END IF;
    SELECT string_agg(asset, ', ') INTO unbalanced FROM (
        SELECT asset
        FROM postings
        WHERE entry_id = NEW.entry_id
        GROUP BY asset
        HAVING sum(CASE direction WHEN 'D' THEN amount ELSE 0 END)
            <> sum(CASE direction WHEN 'C' THEN amount ELSE 0 END)
    ) AS off;
    IF unbalanced IS NOT NULL THEN
        RAISE EXCEPTION 'journal entry % does not balance in %', NEW.entry_id, unbalanced
            USING ERRCODE = '23514', CONSTRAINT = 'entry_balanced';
    END IF;
    RETURN NULL;
END $$;

CREATE CONSTRAINT TRIGGER postings_balanced
    AFTER INSERT ON postings
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION ledger_check_entry_balanced();

-- An entry with no postings at all is refused too (it would balance vacuously).
CREATE FUNCTION ledger_check_entry_has_postings() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM postings WHERE entry_id = NEW.id) THEN
        RAISE EXCEPTION 'journal entry % has no postings', NEW.id
            USING ERRCODE = '23514', CONSTRAINT = 'entry_balanced';
    END IF;
    RETURN NULL;
END $$;

CREATE CONSTRAINT TRIGGER journal_entries_have_postings
    AFTER INSERT ON journal_entries
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION ledger_check_entry_has_postings();

-- Mistakes are corrected by new entries, never by edits.
CREATE FUNCTION ledger_refuse_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the ledger is append-only: % on % is refused', TG_OP, TG_TABLE_NAME
        USING ERRCODE = '23514', CONSTRAINT = 'ledger_append_only';
END $$;

CREATE TRIGGER postings_append_only BEFORE UPDATE OR DELETE ON postings
    FOR EACH ROW EXECUTE FUNCTION ledger_refuse_change();
CREATE TRIGGER postings_no_truncate BEFORE TRUNCATE ON postings
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_change();
CREATE TRIGGER journal_entries_append_only BEFORE UPDATE OR DELETE ON journal_entries
    FOR EACH ROW EXECUTE FUNCTION ledger_refuse_change();
CREATE TRIGGER journal_entries_no_truncate BEFORE TRUNCATE ON journal_entries
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_change();

-- Balances come from postings; nothing else is the truth.
CREATE VIEW account_balances AS
SELECT a.id AS account_id, a.code, a.kind, a.user_id, a.asset, a.normal_side,
       COALESCE(sum(CASE WHEN p.direction = a.normal_side THEN p.amount ELSE -p.amount END), 0)::bigint
           AS balance
FROM accounts a
LEFT JOIN postings p ON p.account_id = a.id
GROUP BY a.id;

-- The app's POSTs: the first answer to (user, route, key) is kept and replayed.
CREATE TABLE idempotency_keys (
    user_id         text NOT NULL REFERENCES users (id),
    route           text NOT NULL,
    key             text NOT NULL CHECK (length(key) BETWEEN 1 AND 255),
    request_hash    text NOT NULL,
    response_status integer,
    response_body   jsonb,
    created_at      timestamptz NOT NULL DEFAULT now(),
    completed_at    timestamptz,
    PRIMARY KEY (user_id, route, key),
    CHECK ((response_status IS NULL) = (completed_at IS NULL))
);

-- Workers say they are alive; the operator dashboard reads this.
CREATE TABLE worker_heartbeats (
    worker_id  text PRIMARY KEY,
    hostname   text NOT NULL,
    pid        integer NOT NULL,
    started_at timestamptz NOT NULL,
    seen_at    timestamptz NOT NULL
);
