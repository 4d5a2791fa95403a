-- The state's SQL on PostgreSQL, by name (sidecar/state/sql.py loads it).
-- Times are Unix seconds; %(now)s is NULL in production, so the store's own clock decides
-- (one clock for every sidecar), and a test's fake clock otherwise.

-- name: migrate_1
CREATE TABLE sidecar_rate_limits (
    key text PRIMARY KEY,                      -- a hash of the Trengo token, never the token
    held_until double precision NOT NULL DEFAULT 0
);
CREATE TABLE sidecar_rate_log (
    key text NOT NULL,
    at double precision NOT NULL
);
CREATE INDEX sidecar_rate_log_key_at ON sidecar_rate_log (key, at);
CREATE TABLE sidecar_contacts (
    key text PRIMARY KEY,                      -- scope and identifier cache key
    contact_id bigint NOT NULL,
    name text,
    expires_at double precision NOT NULL
);
CREATE INDEX sidecar_contacts_expires_at ON sidecar_contacts (expires_at);
CREATE TABLE sidecar_results (
    key text PRIMARY KEY,                      -- scope and message_id
    result jsonb NOT NULL,
    expires_at double precision NOT NULL
);
CREATE INDEX sidecar_results_expires_at ON sidecar_results (expires_at);

-- name: migrate_2
-- Acquiring a slot in one round trip instead of four. A VOLATILE function's statements each take a
-- fresh snapshot, so once the token's row is locked, the count sees every send committed before.
CREATE FUNCTION sidecar_acquire_slot(p_key text, p_limit integer, p_window double precision,
                                     p_now double precision)
RETURNS TABLE (wait double precision, held boolean) LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_held double precision;
    v_now double precision;
    v_count bigint;
    v_oldest double precision;
BEGIN
    INSERT INTO sidecar_rate_limits (key) VALUES (p_key)
    ON CONFLICT (key) DO UPDATE SET key = EXCLUDED.key
    RETURNING held_until INTO v_held;
    v_now := coalesce(p_now, extract(epoch FROM clock_timestamp()));  -- read once the row is ours
    IF v_held > v_now THEN
        RETURN QUERY SELECT v_held - v_now, true;
        RETURN;
    END IF;
    DELETE FROM sidecar_rate_log WHERE key = p_key AND at <= v_now - p_window;
    SELECT count(*), min(at) INTO v_count, v_oldest FROM sidecar_rate_log WHERE key = p_key;
    IF v_count < p_limit THEN
        INSERT INTO sidecar_rate_log (key, at) VALUES (p_key, v_now);
        RETURN QUERY SELECT 0::double precision, false;
        RETURN;
    END IF;
    RETURN QUERY SELECT greatest(v_oldest + p_window - v_now, 0.001), false;
END
$$;

-- name: migrate_3
-- The slot's time comes back with it, so that slot_answered can move that entry to when the call's
-- answer came (sidecar/trengo_api/ratelimit.py says why). A new column in the result (not
-- named at: inside the function that would be ambiguous with the log's column): drop, create.
DROP FUNCTION sidecar_acquire_slot(text, integer, double precision, double precision);
CREATE FUNCTION sidecar_acquire_slot(p_key text, p_limit integer, p_window double precision,
                                     p_now double precision)
RETURNS TABLE (wait double precision, held boolean, taken_at double precision) LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_held double precision;
    v_now double precision;
    v_count bigint;
    v_oldest double precision;
BEGIN
    INSERT INTO sidecar_rate_limits (key) VALUES (p_key)
    ON CONFLICT (key) DO UPDATE SET key = EXCLUDED.key
    RETURNING held_until INTO v_held;
    v_now := coalesce(p_now, extract(epoch FROM clock_timestamp()));  -- read once the row is ours
    IF v_held > v_now THEN
        RETURN QUERY SELECT v_held - v_now, true, NULL::double precision;
        RETURN;
    END IF;
    DELETE FROM sidecar_rate_log WHERE key = p_key AND at <= v_now - p_window;
    SELECT count(*), min(at) INTO v_count, v_oldest FROM sidecar_rate_log WHERE key = p_key;
    IF v_count < p_limit THEN
        INSERT INTO sidecar_rate_log (key, at) VALUES (p_key, v_now);
        RETURN QUERY SELECT 0::double precision, false, v_now;
        RETURN;
    END IF;
    RETURN QUERY SELECT greatest(v_oldest + p_window - v_now, 0.001), false, NULL::double precision;
END
$$;

-- name: acquire_slot
SELECT wait, held, taken_at FROM sidecar_acquire_slot(%(key)s, %(limit)s::integer, %(window)s::float8, %(now)s::float8);

-- name: schema_table
CREATE TABLE IF NOT EXISTS sidecar_schema (component text PRIMARY KEY, version integer NOT NULL);

-- name: schema_lock
SELECT pg_advisory_xact_lock(%(lock)s);

-- name: schema_version
SELECT version FROM sidecar_schema WHERE component = %(component)s;

-- name: set_schema_version
INSERT INTO sidecar_schema (component, version) VALUES (%(component)s, %(version)s)
ON CONFLICT (component) DO UPDATE SET version = EXCLUDED.version;

-- name: ping
SELECT 1;

-- name: slot_answered
-- One entry (two calls may have been logged at the same instant), moved to now, never earlier.
UPDATE sidecar_rate_log
SET at = greatest(at, coalesce(%(now)s::float8, extract(epoch FROM clock_timestamp())) - %(earlier_by)s::float8)
WHERE ctid = (SELECT ctid FROM sidecar_rate_log WHERE key = %(key)s AND at = %(at)s::float8 LIMIT 1);

-- name: slot_hold
INSERT INTO sidecar_rate_limits (key, held_until)
VALUES (%(key)s, coalesce(%(now)s::float8, extract(epoch FROM clock_timestamp())) + %(seconds)s)
ON CONFLICT (key) DO UPDATE
SET held_until = greatest(sidecar_rate_limits.held_until, EXCLUDED.held_until);

-- name: get_contact
SELECT contact_id, name FROM sidecar_contacts
WHERE key = %(key)s AND expires_at > coalesce(%(now)s::float8, extract(epoch FROM clock_timestamp()));

-- name: put_contact
INSERT INTO sidecar_contacts (key, contact_id, name, expires_at)
VALUES (%(key)s, %(contact_id)s, %(name)s,
        coalesce(%(now)s::float8, extract(epoch FROM clock_timestamp())) + %(ttl)s)
ON CONFLICT (key) DO UPDATE
SET contact_id = EXCLUDED.contact_id, name = EXCLUDED.name, expires_at = EXCLUDED.expires_at;

-- name: discard_contact
DELETE FROM sidecar_contacts WHERE key = %(key)s;

-- name: get_result
SELECT result FROM sidecar_results
WHERE key = %(key)s AND expires_at > coalesce(%(now)s::float8, extract(epoch FROM clock_timestamp()));

-- name: put_result
-- The first live result wins: a message_id has one.
INSERT INTO sidecar_results (key, result, expires_at)
VALUES (%(key)s, %(result)s, coalesce(%(now)s::float8, extract(epoch FROM clock_timestamp())) + %(ttl)s)
ON CONFLICT (key) DO UPDATE
SET result = EXCLUDED.result, expires_at = EXCLUDED.expires_at
WHERE sidecar_results.expires_at <= coalesce(%(now)s::float8, extract(epoch FROM clock_timestamp()));

-- name: discard_result
DELETE FROM sidecar_results WHERE key = %(key)s;

-- name: try_lock
SELECT pg_try_advisory_xact_lock(%(lock)s);

-- name: prune_contacts
DELETE FROM sidecar_contacts
WHERE expires_at <= coalesce(%(now)s::float8, extract(epoch FROM clock_timestamp()));

-- name: prune_results
DELETE FROM sidecar_results
WHERE expires_at <= coalesce(%(now)s::float8, extract(epoch FROM clock_timestamp()));

-- name: prune_rate_log
DELETE FROM sidecar_rate_log
WHERE at <= coalesce(%(now)s::float8, extract(epoch FROM clock_timestamp())) - %(window)s;
