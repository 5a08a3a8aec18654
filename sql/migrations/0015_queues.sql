-- Issue 13, named queues (payouts, chain, maintenance). Pausing a queue is an operator's decision, so
-- PostgreSQL records it; Redis mirrors it for the workers' polls, and every worker re-asserts the mirror
-- from here at its start and on its heartbeat, so a Redis wipe never silently resumes a queue.
CREATE TABLE queue_states (
    queue      text PRIMARY KEY CHECK (queue IN ('payouts', 'chain', 'maintenance')),
    paused     boolean NOT NULL DEFAULT false,
    changed_by text,         -- who paused or resumed it last (the admin_actions row says more)
    changed_at timestamptz
);
INSERT INTO queue_states (queue) VALUES ('payouts'), ('chain'), ('maintenance');

-- Which queues each worker consumes (`kiota worker --queues`): `kiota worker --check` and the stats read it.
ALTER TABLE worker_heartbeats ADD COLUMN queues text[] NOT NULL DEFAULT '{}';
