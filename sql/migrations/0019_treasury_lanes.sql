-- Several treasuries (issue 14): each treasury key has its own lane, and a lane may pause alone.
-- A treasury running dry pauses its own lane here; the others go on (kiota/payouts/lanes.py). The global
-- `payout_guards.lane_paused` stays: a reverted or lost payout still stops every lane, and the kill switch
-- and the hourly and daily caps are the guards of all treasuries together.
-- `address` is the treasury's checksummed address, as `payouts.from_address` and `treasury_nonces` name it.
CREATE TABLE treasury_lanes (
    chain_id     bigint NOT NULL,
    address      text NOT NULL,
    paused       boolean NOT NULL DEFAULT false,
    pause_reason text,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    updated_by   text,
    PRIMARY KEY (chain_id, address),
    CHECK (paused OR pause_reason IS NULL)
);
