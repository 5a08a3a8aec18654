-- One write path for an M-Pesa answer: a posted callback and the STK query's answer for a
-- lost callback are carried out by the same function, `mpesa_apply_answers`.
--
-- An item is an answer decided in Python (kiota/mpesa.py decide(), kiota/mpesa_answers.py
-- plan()): what M-Pesa said, the deposit as the decision saw it, and what to write. A posted
-- callback also brings its own row for `mpesa_callbacks` (`callback`, of the table's own row
-- type, so a new column needs no change here); the STK query's answer brings none, since
-- nobody posted it, and may bring the confirmation it is (`confirmed_by`, `confirm_answer`:
-- the query's 0 confirms the success, kiota/confirm.py). Everything else is what 0008's
-- `mpesa_apply_callbacks` did: applied only where the deposit still looks as it did when
-- decided (the others come back stale, nothing of them written), set-based, in one
-- statement and its own transaction; a group names each CheckoutRequestID and each receipt
-- once; any error fails the whole call.
--
-- Expand only: the previous release calls `mpesa_apply_callbacks` (0008) during a deploy, so
-- it stays until a later release drops it and its type.

CREATE TYPE mpesa_answer_in AS (
    ord                 integer,          -- the item's place in the group, echoed back
    callback            mpesa_callbacks,  -- the posted callback's row, or NULL (the STK query's answer)
    -- what M-Pesa said
    checkout_request_id text,
    result_code         integer,
    amount_kes          bigint,
    mpesa_receipt       text,
    transaction_at      timestamptz,
    -- what the decision saw
    seen_deposit_id     uuid,
    seen_status         text,
    seen_receipt        text,
    seen_failure_code   text,
    seen_received_kes   bigint,
    seen_receipt_taken  boolean,
    -- what it decided
    deposit_change      text,             -- NULL, 'succeeded', 'receipt', 'failed' or 'needs_review'
    deposit_reason      text,             -- the failure or review reason that goes with the change
    confirmed_by        text,             -- a success confirmed by this very answer (the STK query), or NULL
    confirm_answer      text,
    entry_key           text,             -- a journal entry to post (idempotent on its key), or NULL
    entry_kind          text,
    postings            ledger_posting_in[],
    job_id              text,             -- a job row to record, or NULL
    job_function        text,
    review_kind         text,             -- a review item to list (once per dedupe key), or NULL
    review_key          text,
    review_amount_kes   bigint,
    review_reason       text
);

CREATE FUNCTION mpesa_apply_answers(items mpesa_answer_in[])
RETURNS integer[]  -- the ord of every item applied; the others are stale
LANGUAGE plpgsql
-- Plan each statement once per session: no plan here depends on the group (every row is reached
-- by a key from the group), and planning the statements anew at each call cost more than the
-- work of a small group.
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
    v_repeats boolean;
    v_lock_keys bigint[];
    todo mpesa_answer_in[];
    v_succeeded bigint;
    v_to_succeed bigint;
    v_unknown_change bigint;
    v_wanted bigint;
    v_inserted bigint;
    v_replayed text[];
    v_key text;
BEGIN
    SELECT count(DISTINCT i.checkout_request_id) <> count(*)
               OR count(DISTINCT i.mpesa_receipt) <> count(i.mpesa_receipt),
           array_agg(DISTINCT hashtextextended(i.checkout_request_id, 0) ORDER BY hashtextextended(i.checkout_request_id, 0))
    INTO v_repeats, v_lock_keys
    FROM unnest(items) AS i;
    IF v_repeats THEN
        RAISE EXCEPTION 'a callback group names a CheckoutRequestID or a receipt twice' USING ERRCODE = '22023';
    END IF;
    -- The group's CheckoutRequestIDs are locked in one order for the whole transaction: the lock
    -- an STK push being recorded takes (lock_checkout), and no deadlock between groups.
    PERFORM pg_advisory_xact_lock(k) FROM unnest(v_lock_keys) AS k;

    -- The deposits, locked (in id order) and read as they are now; what is still as the decision
    -- saw it is applied.
    WITH locked AS (
        SELECT d.id, d.checkout_request_id, d.status, d.mpesa_receipt, d.failure_code, d.received_kes
        FROM deposits d
        WHERE d.checkout_request_id = ANY (ARRAY(SELECT i.checkout_request_id FROM unnest(items) AS i))
        ORDER BY d.id
        FOR UPDATE
    )
    SELECT ARRAY(
        SELECT i::mpesa_answer_in
        FROM unnest(items) AS i
        LEFT JOIN locked d ON d.checkout_request_id = i.checkout_request_id
        WHERE d.id IS NOT DISTINCT FROM i.seen_deposit_id
          AND d.status IS NOT DISTINCT FROM i.seen_status
          AND d.mpesa_receipt IS NOT DISTINCT FROM i.seen_receipt
          AND d.failure_code IS NOT DISTINCT FROM i.seen_failure_code
          AND d.received_kes IS NOT DISTINCT FROM i.seen_received_kes
          AND (i.mpesa_receipt IS NOT NULL
               AND EXISTS (SELECT 1 FROM deposits r WHERE r.mpesa_receipt = i.mpesa_receipt))
              IS NOT DISTINCT FROM i.seen_receipt_taken)
    INTO todo;

    -- Everything the applied items write, in one statement. Each deposit is reached by its
    -- primary key alone: what it must look like (pending for a success or a failure, no receipt
    -- for a receipt) was checked above under its lock, as the seen_* columns; a condition on the
    -- deposits' own columns could lead the planner to read every pending deposit while the table
    -- has no statistics. Journal entries are idempotent on their key (as store.ledger.post_entry):
    -- a new key gets its postings, a key used before is checked below.
    WITH t AS (
        SELECT * FROM unnest(todo)
    ), callbacks AS (
        INSERT INTO mpesa_callbacks
        SELECT (t.callback).* FROM t WHERE (t.callback).id IS NOT NULL
    ), moved AS (
        UPDATE deposits d
        SET status = CASE t.deposit_change
                WHEN 'succeeded' THEN 'processing' WHEN 'failed' THEN 'failed' WHEN 'needs_review' THEN 'needs_review'
                ELSE d.status END,
            mpesa_receipt = CASE WHEN t.deposit_change IN ('succeeded', 'receipt') THEN t.mpesa_receipt
                ELSE d.mpesa_receipt END,
            received_kes = CASE WHEN t.deposit_change = 'succeeded' THEN t.amount_kes ELSE d.received_kes END,
            paid_at_mpesa = CASE WHEN t.deposit_change IN ('succeeded', 'receipt') THEN t.transaction_at
                ELSE d.paid_at_mpesa END,
            processing_since = CASE WHEN t.deposit_change = 'succeeded' THEN now() ELSE d.processing_since END,
            failure_code = CASE WHEN t.deposit_change = 'failed' THEN t.result_code::text ELSE d.failure_code END,
            failure_reason = CASE WHEN t.deposit_change = 'failed' THEN t.deposit_reason ELSE d.failure_reason END,
            review_reason = CASE WHEN t.deposit_change = 'needs_review' THEN t.deposit_reason ELSE d.review_reason END,
            -- Once: a confirmation is never replaced.
            confirmed_at = CASE WHEN t.deposit_change = 'succeeded' AND t.confirmed_by IS NOT NULL
                                     AND d.confirmed_at IS NULL THEN now() ELSE d.confirmed_at END,
            confirmed_by = CASE WHEN t.deposit_change = 'succeeded' AND t.confirmed_by IS NOT NULL
                                     AND d.confirmed_at IS NULL THEN t.confirmed_by ELSE d.confirmed_by END,
            confirm_answer = CASE WHEN t.deposit_change = 'succeeded' AND t.confirmed_by IS NOT NULL
                                     AND d.confirmed_at IS NULL THEN t.confirm_answer ELSE d.confirm_answer END,
            updated_at = now()
        FROM t
        WHERE d.id = t.seen_deposit_id
          AND CASE t.deposit_change
                WHEN 'succeeded' THEN t.seen_status = 'pending'
                WHEN 'receipt' THEN t.seen_receipt IS NULL
                WHEN 'failed' THEN t.seen_status = 'pending'
                WHEN 'needs_review' THEN t.seen_status IN ('pending', 'processing', 'failed')
                ELSE false END
        RETURNING t.deposit_change
    ), new_entries AS (
        INSERT INTO journal_entries (idempotency_key, kind, memo)
        SELECT t.entry_key, t.entry_kind, NULL FROM t WHERE t.entry_key IS NOT NULL
        ON CONFLICT (idempotency_key) DO NOTHING
        RETURNING id, idempotency_key
    ), wanted AS (
        SELECT e.id AS entry_id, p.*
        FROM new_entries e
        JOIN t ON t.entry_key = e.idempotency_key
        CROSS JOIN LATERAL unnest(t.postings) AS p
    ), inserted AS (
        INSERT INTO postings (entry_id, account_id, asset, direction, amount)
        SELECT w.entry_id, a.id, a.asset, w.direction, w.amount
        FROM wanted w JOIN accounts a ON a.code = w.account_code AND a.asset = w.asset
        RETURNING 1
    ), queued AS (
        INSERT INTO jobs (id, function, deposit_id, status)
        SELECT t.job_id, t.job_function, t.seen_deposit_id, 'queued' FROM t WHERE t.job_id IS NOT NULL
        ON CONFLICT (id) DO NOTHING
    ), listed AS (
        INSERT INTO review_items (kind, dedupe_key, deposit_id, callback_id, amount_kes, reason)
        SELECT t.review_kind, t.review_key, t.seen_deposit_id, (t.callback).id, t.review_amount_kes, t.review_reason
        FROM t WHERE t.review_key IS NOT NULL
        ON CONFLICT (dedupe_key) DO NOTHING
    )
    -- (Data-modifying CTEs run to completion whether or not the query reads them.)
    SELECT (SELECT count(*) FROM moved WHERE moved.deposit_change = 'succeeded'),
           (SELECT count(*) FROM t WHERE t.deposit_change = 'succeeded'),
           (SELECT count(*) FROM t WHERE t.deposit_change NOT IN ('succeeded', 'receipt', 'failed', 'needs_review')),
           (SELECT count(*) FROM wanted),
           (SELECT count(*) FROM inserted),
           ARRAY(SELECT t.entry_key FROM t
                 WHERE t.entry_key IS NOT NULL AND t.entry_key NOT IN (SELECT n.idempotency_key FROM new_entries n))
    INTO v_succeeded, v_to_succeed, v_unknown_change, v_wanted, v_inserted, v_replayed;

    IF v_succeeded <> v_to_succeed THEN
        RAISE EXCEPTION 'a deposit to succeed was not pending';
    END IF;
    IF v_unknown_change > 0 THEN
        RAISE EXCEPTION 'unknown deposit change';
    END IF;
    IF v_inserted <> v_wanted THEN
        RAISE EXCEPTION 'a journal entry names an unknown account or a wrong asset';
    END IF;
    FOREACH v_key IN ARRAY v_replayed LOOP
        IF ARRAY(SELECT ROW(a.code, p.asset, p.direction::text, p.amount)::ledger_posting_in
                 FROM journal_entries e JOIN postings p ON p.entry_id = e.id JOIN accounts a ON a.id = p.account_id
                 WHERE e.idempotency_key = v_key ORDER BY 1)
           IS DISTINCT FROM
           ARRAY(SELECT x FROM unnest(todo) AS t CROSS JOIN LATERAL unnest(t.postings) AS x
                 WHERE t.entry_key = v_key ORDER BY 1) THEN
            RAISE EXCEPTION 'idempotency key % was used for other postings', v_key
                USING ERRCODE = '23514', CONSTRAINT = 'entry_replayed';
        END IF;
    END LOOP;
    RETURN ARRAY(SELECT t.ord FROM unnest(todo) AS t);
END $$;
