-- The two-person rule's proposals (kiota/review_actions.py); owned by kiota/store/proposals.py.

-- name: proposal_insert
-- action, review item, deposit, user, asset, amount, note, proposer. Nothing when a live proposal exists for the
-- item or deposit already, or one was approved (the partial unique indexes of 0016).
INSERT INTO money_proposals (action, review_item_id, deposit_id, user_id, asset, amount, note, proposed_by)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
ON CONFLICT DO NOTHING
RETURNING *;

-- name: proposal_for_update
SELECT * FROM money_proposals WHERE id = $1 FOR UPDATE;

-- name: proposal_close
-- id, new status, who, note, the entry it booked. Only a live proposal closes; approved_by is set on approval
-- only, and the table's CHECK refuses the proposer as approver.
UPDATE money_proposals
SET status = $2, approved_by = CASE WHEN $2 = 'approved' THEN $3 END, closed_by = $3, closed_at = now(),
    close_note = $4, entry_id = $5
WHERE id = $1 AND status = 'proposed'
RETURNING *;

-- name: proposals_open
SELECT * FROM money_proposals WHERE status = 'proposed' ORDER BY proposed_at, id;

-- name: proposals_of
-- Every proposal for these review items or this deposit, oldest first.
SELECT * FROM money_proposals
WHERE review_item_id = ANY($1::bigint[]) OR deposit_id = $2
ORDER BY proposed_at, id;

-- name: review_item_for_update
SELECT * FROM review_items WHERE id = $1 FOR UPDATE;

-- name: held_transfer_for_share
-- The transfer whose USDC a review item holds: its status, and whether its log is missing from chain now
-- (kept by the scanner, sql/queries/usdc.sql `held_transfers_presence`). Shared-locked: a round that changes
-- it waits for the approval's transaction, or the approval reads what the round wrote.
SELECT status, missing_since IS NOT NULL AS missing FROM chain_transfers WHERE id = $1 FOR SHARE;

-- name: review_item_resolve
-- id, resolution, the transfer whose USDC it held: every open item listing that money is resolved with it.
UPDATE review_items SET status = 'resolved', resolved_at = now(), resolution = $2
WHERE (id = $1 OR chain_transfer_id = $3) AND status = 'open'
RETURNING id;

-- name: review_items_by_ids
SELECT * FROM review_items WHERE id = ANY($1::bigint[]);
