-- The state's SQL on SQLite, by name (sidecar/state/sql.py loads it). Times are Unix seconds from
-- the host's clock: every process sharing a SQLite file is on that one host.

-- name: migrate_1
CREATE TABLE sidecar_rate_limits (key TEXT PRIMARY KEY, held_until REAL NOT NULL DEFAULT 0);
CREATE TABLE sidecar_rate_log (key TEXT NOT NULL, at REAL NOT NULL);
CREATE INDEX sidecar_rate_log_key_at ON sidecar_rate_log (key, at);
CREATE TABLE sidecar_contacts (key TEXT PRIMARY KEY, contact_id INTEGER NOT NULL, name TEXT, expires_at REAL NOT NULL);
CREATE INDEX sidecar_contacts_expires_at ON sidecar_contacts (expires_at);
CREATE TABLE sidecar_results (key TEXT PRIMARY KEY, result TEXT NOT NULL, expires_at REAL NOT NULL);
CREATE INDEX sidecar_results_expires_at ON sidecar_results (expires_at);

-- name: schema_table
CREATE TABLE IF NOT EXISTS sidecar_schema (component TEXT PRIMARY KEY, version INTEGER NOT NULL);

-- name: schema_version
SELECT version FROM sidecar_schema WHERE component = :component;

-- name: set_schema_version
INSERT INTO sidecar_schema (component, version) VALUES (:component, :version)
ON CONFLICT (component) DO UPDATE SET version = excluded.version;

-- name: ping
SELECT 1;

-- name: slot_held
SELECT held_until FROM sidecar_rate_limits WHERE key = :key;

-- name: slot_trim
DELETE FROM sidecar_rate_log WHERE key = :key AND at <= :now - :window;

-- name: slot_count
SELECT count(*), min(at) FROM sidecar_rate_log WHERE key = :key;

-- name: slot_take
INSERT INTO sidecar_rate_log (key, at) VALUES (:key, :now);

-- name: slot_answered
-- One entry (two calls may have been logged at the same instant), moved to now, never earlier.
UPDATE sidecar_rate_log SET at = max(at, :now - :earlier_by)
WHERE rowid = (SELECT rowid FROM sidecar_rate_log WHERE key = :key AND at = :at LIMIT 1);

-- name: slot_hold
INSERT INTO sidecar_rate_limits (key, held_until) VALUES (:key, :now + :seconds)
ON CONFLICT (key) DO UPDATE SET held_until = max(held_until, excluded.held_until);

-- name: get_contact
SELECT contact_id, name FROM sidecar_contacts WHERE key = :key AND expires_at > :now;

-- name: put_contact
INSERT INTO sidecar_contacts (key, contact_id, name, expires_at) VALUES (:key, :contact_id, :name, :now + :ttl)
ON CONFLICT (key) DO UPDATE
SET contact_id = excluded.contact_id, name = excluded.name, expires_at = excluded.expires_at;

-- name: discard_contact
DELETE FROM sidecar_contacts WHERE key = :key;

-- name: get_result
SELECT result FROM sidecar_results WHERE key = :key AND expires_at > :now;

-- name: put_result
-- The first live result wins: a message_id has one.
INSERT INTO sidecar_results (key, result, expires_at) VALUES (:key, :result, :now + :ttl)
ON CONFLICT (key) DO UPDATE SET result = excluded.result, expires_at = excluded.expires_at
WHERE sidecar_results.expires_at <= :now;

-- name: discard_result
DELETE FROM sidecar_results WHERE key = :key;

-- name: prune_contacts
DELETE FROM sidecar_contacts WHERE expires_at <= :now;

-- name: prune_results
DELETE FROM sidecar_results WHERE expires_at <= :now;

-- name: prune_rate_log
DELETE FROM sidecar_rate_log WHERE at <= :now - :window;
