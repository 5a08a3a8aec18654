-- Issue 13, operators instead of one shared password: each person an account with a role (viewers read,
-- operators act), and every admin action recorded with who did it, what it changed, before and after.
CREATE TABLE operators (
    id            bigserial PRIMARY KEY,
    name          text NOT NULL UNIQUE CHECK (name ~ '^[A-Za-z0-9._@-]{1,64}$'),  -- never a ':' (HTTP Basic)
    role          text NOT NULL CHECK (role IN ('viewer', 'operator')),
    password_hash text NOT NULL,  -- argon2id, in its own encoded form (parameters and salt included)
    created_at    timestamptz NOT NULL DEFAULT now(),
    disabled_at   timestamptz     -- a disabled account is refused; kept, so its actions still name it
);

CREATE TABLE admin_actions (
    id          bigserial PRIMARY KEY,
    actor       text NOT NULL,  -- the operator's name (ADMIN_USERNAME for the bootstrap operator)
    actor_role  text NOT NULL CHECK (actor_role IN ('viewer', 'operator')),
    action      text NOT NULL,
    target_kind text NOT NULL,
    target_id   text,
    before      jsonb,
    after       jsonb,
    at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX admin_actions_target_idx ON admin_actions (target_kind, target_id, at DESC);

-- The record of what operators did is not theirs to edit.
CREATE FUNCTION admin_actions_refuse_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'admin_actions is append-only: % is refused', TG_OP
        USING ERRCODE = '23514', CONSTRAINT = 'admin_actions_append_only';
END $$;
CREATE TRIGGER admin_actions_append_only BEFORE UPDATE OR DELETE ON admin_actions
    FOR EACH ROW EXECUTE FUNCTION admin_actions_refuse_change();
CREATE TRIGGER admin_actions_no_truncate BEFORE TRUNCATE ON admin_actions
    FOR EACH STATEMENT EXECUTE FUNCTION admin_actions_refuse_change();
