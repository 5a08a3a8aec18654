-- Operators' accounts and the record of their actions (kiota/operators.py); owned by kiota/store/admin.py.

-- name: operator_insert
-- name, role, argon2 hash; nothing when the name is taken, in any case or spacing (0018's person_key index).
INSERT INTO operators (name, role, password_hash) VALUES ($1, $2, $3)
ON CONFLICT DO NOTHING
RETURNING *;

-- name: operator_by_name
SELECT * FROM operators WHERE name = $1;

-- name: operator_of_person
-- The account whose name is this person's, whatever its case.
SELECT * FROM operators WHERE person_key(name) = person_key($1);

-- name: operator_accounts_exist
-- Whether an enabled account may act: the bootstrap operator then moves no money (kiota/operators.py).
SELECT EXISTS (SELECT 1 FROM operators WHERE role = 'operator' AND disabled_at IS NULL);

-- name: operators_all
SELECT * FROM operators ORDER BY name;

-- name: operator_disable
UPDATE operators SET disabled_at = now() WHERE name = $1 AND disabled_at IS NULL RETURNING *;

-- name: admin_action_insert
-- actor, actor_role, action, target_kind, target_id, before, after
INSERT INTO admin_actions (actor, actor_role, action, target_kind, target_id, before, after)
VALUES ($1, $2, $3, $4, $5, $6, $7)
RETURNING *;

-- name: admin_actions_on
-- What was done to a target (its page shows it), newest first; a NULL id: every target of that kind.
SELECT * FROM admin_actions
WHERE target_kind = $1 AND ($2::text IS NULL OR target_id = $2)
ORDER BY at DESC, id DESC
LIMIT $3;

-- name: admin_actions_find
-- The log, newest first: by actor ($1), action ($2), target kinds ($3) and target id ($4), each NULL for any.
SELECT * FROM admin_actions
WHERE ($1::text IS NULL OR actor = $1)
  AND ($2::text IS NULL OR action = $2)
  AND ($3::text[] IS NULL OR target_kind = ANY($3))
  AND ($4::text IS NULL OR target_id = $4)
ORDER BY at DESC, id DESC
LIMIT $5 OFFSET $6;
