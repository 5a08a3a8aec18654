-- Several treasuries (issue 14): each treasury's free USDC as its lane last read it (its balance less its payouts in
-- flight), so that a deposit larger than one treasury's free USDC goes to a lane whose treasury covers it, and is
-- blocked with a reason when none does, instead of pausing every lane in turn (kiota/payouts/lanes.py `choose_lane`).
-- A reading, not money we account with: it only steers the choice; the lane checks its funds again before it signs.
CREATE TABLE treasury_funds (
    chain_id        bigint NOT NULL,
    address         text NOT NULL,  -- checksummed, as treasury_lanes and payouts.from_address name it
    free_usdc_micro bigint NOT NULL,
    read_at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (chain_id, address)
);
