-- The queue's queries on PostgreSQL, by name (sidecar/queue/postgres.py runs them).
-- now: a Unix time from the caller's clock, or NULL for the server's.

-- name: migrate_1
CREATE TABLE IF NOT EXISTS queue_meta (
  key TEXT PRIMARY KEY,
  value BIGINT NOT NULL
);
INSERT INTO queue_meta (key, value) VALUES ('seq', 0), ('schema_version', 1) ON CONFLICT DO NOTHING;
CREATE TABLE IF NOT EXISTS queue_deliveries (
  id BIGSERIAL PRIMARY KEY,
  message_id TEXT NOT NULL UNIQUE,
  person TEXT NOT NULL,
  event JSONB NOT NULL,
  state TEXT NOT NULL,
  active BOOLEAN NOT NULL DEFAULT TRUE,
  attempts INTEGER NOT NULL DEFAULT 0,
  accepted_at DOUBLE PRECISION NOT NULL,
  retry_from DOUBLE PRECISION NOT NULL,
  next_attempt_at DOUBLE PRECISION NOT NULL,
  lease_owner TEXT,
  lease_until DOUBLE PRECISION,
  write_sent BOOLEAN NOT NULL DEFAULT FALSE,
  forced BOOLEAN NOT NULL DEFAULT FALSE,
  result JSONB,
  error JSONB,
  seq BIGINT NOT NULL DEFAULT 0,
  finished_at DOUBLE PRECISION
);
CREATE INDEX IF NOT EXISTS queue_person_active ON queue_deliveries (person, id) WHERE active;
CREATE INDEX IF NOT EXISTS queue_due ON queue_deliveries (next_attempt_at, id) WHERE active;
CREATE INDEX IF NOT EXISTS queue_seq ON queue_deliveries (seq) WHERE seq > 0;
CREATE INDEX IF NOT EXISTS queue_state ON queue_deliveries (state, id);

-- name: migrate_2
-- The Enqueue's trace context (W3C traceparent), so the delivery's span links to it (issue 14).
ALTER TABLE queue_deliveries ADD COLUMN IF NOT EXISTS trace JSONB;

-- name: migrate_3
-- Every change of state, appended with its own cursor, for WatchDeliveries (a row holds only its last
-- one, so a retry's "queued again" was overwritten before a watcher saw it). Seeded with each row's
-- last change, so a watcher resuming across the upgrade misses nothing it could have seen before.
CREATE TABLE IF NOT EXISTS queue_changes (
  seq BIGINT PRIMARY KEY,
  delivery_id BIGINT NOT NULL,
  message_id TEXT NOT NULL,
  state TEXT NOT NULL,
  attempts INTEGER NOT NULL,
  accepted_at DOUBLE PRECISION NOT NULL,
  next_attempt_at DOUBLE PRECISION NOT NULL,
  result JSONB,
  error JSONB,
  at DOUBLE PRECISION NOT NULL
);
CREATE INDEX IF NOT EXISTS queue_changes_at ON queue_changes (at);
INSERT INTO queue_changes
SELECT seq, id, message_id, state, attempts, accepted_at, next_attempt_at, result, error,
       COALESCE(finished_at, accepted_at)
FROM queue_deliveries WHERE seq > 0
ON CONFLICT DO NOTHING;

-- name: migrate_4
-- What the queue holds for delivery (queueMaxDepth, queueMaxBytes): each row's stored bytes, and the
-- events and bytes not yet delivered, kept in 8 shard rows by the transactions that change them
-- (acceptance, delivered, failed rows pruned). Shards, so enqueues on different connections do not
-- all wait on one row lock; their sum is the total. Seeded from the rows not delivered at the upgrade.
ALTER TABLE queue_deliveries ADD COLUMN IF NOT EXISTS bytes BIGINT NOT NULL DEFAULT 0;
UPDATE queue_deliveries SET bytes = octet_length(event::text) WHERE state <> 'delivered';
CREATE TABLE IF NOT EXISTS queue_held (
  shard INTEGER PRIMARY KEY,
  events BIGINT NOT NULL,
  bytes BIGINT NOT NULL
);
INSERT INTO queue_held (shard, events, bytes) SELECT g, 0, 0 FROM generate_series(0, 7) AS g
ON CONFLICT DO NOTHING;
UPDATE queue_held SET
  events = (SELECT count(*) FROM queue_deliveries WHERE state <> 'delivered'),
  bytes = (SELECT coalesce(sum(bytes), 0) FROM queue_deliveries WHERE state <> 'delivered')
WHERE shard = 0;
CREATE INDEX IF NOT EXISTS queue_changes_delivery ON queue_changes (delivery_id);

-- name: add_held
-- Last in an enqueue's transaction: this connection's shard (its lock held to commit), then the total
-- as this transaction sees it: its own rows, and every other shard as last committed.
WITH h AS (UPDATE queue_held SET events = events + %(events)s, bytes = bytes + %(bytes)s
           WHERE shard = pg_backend_pid() %% 8 RETURNING shard, events, bytes)
SELECT (SELECT coalesce(sum(events), 0) FROM queue_held WHERE shard <> (SELECT shard FROM h))
         + (SELECT events FROM h) AS events,
       (SELECT coalesce(sum(bytes), 0) FROM queue_held WHERE shard <> (SELECT shard FROM h))
         + (SELECT bytes FROM h) AS bytes;

-- name: held_total
SELECT coalesce(sum(events), 0), coalesce(sum(bytes), 0) FROM queue_held;

-- name: delivered_held
-- A delivered event is no longer held for delivery: out of the limits' count.
UPDATE queue_held SET events = events - 1,
  bytes = bytes - (SELECT bytes FROM queue_deliveries WHERE id = %(id)s)
WHERE shard = pg_backend_pid() %% 8;

-- name: prune_failed
-- Failed events past queueFailedRetentionSeconds, with every change logged for them.
WITH d AS (DELETE FROM queue_deliveries WHERE state = 'failed' AND finished_at < %(before)s
           RETURNING id, bytes),
c AS (DELETE FROM queue_changes WHERE delivery_id IN (SELECT id FROM d)),
h AS (UPDATE queue_held SET events = events - (SELECT count(*) FROM d),
                            bytes = bytes - (SELECT coalesce(sum(bytes), 0) FROM d)
      WHERE shard = pg_backend_pid() %% 8)
SELECT count(*) FROM d;

-- name: enqueue
INSERT INTO queue_deliveries (message_id, person, event, state, accepted_at, retry_from, next_attempt_at,
                              trace, bytes)
SELECT %(message_id)s, %(person)s, %(event)s::jsonb, 'queued', now_.t, now_.t, now_.t, %(trace)s, %(bytes)s
FROM (SELECT COALESCE(%(now)s::float8, extract(epoch FROM clock_timestamp())::float8) AS t) AS now_
ON CONFLICT (message_id) DO NOTHING
RETURNING id;

-- name: enqueue_failed
-- Refused when accepted (the HTTP ingest): failed at once, inactive, with its cursor, and logged as a
-- change (a watcher sees it fail). A cursor taken for a duplicate is skipped: watchers never wait for one.
WITH c AS (UPDATE queue_meta SET value = value + 1 WHERE key = 'seq' RETURNING value),
u AS (
INSERT INTO queue_deliveries (message_id, person, event, state, active, accepted_at, retry_from,
                              next_attempt_at, trace, error, finished_at, seq, bytes)
SELECT %(message_id)s, %(person)s, %(event)s::jsonb, 'failed', FALSE, now_.t, now_.t, now_.t, %(trace)s,
       %(error)s, now_.t, (SELECT value FROM c), %(bytes)s
FROM (SELECT COALESCE(%(now)s::float8, extract(epoch FROM clock_timestamp())::float8) AS t) AS now_
ON CONFLICT (message_id) DO NOTHING
RETURNING *),
l AS (INSERT INTO queue_changes (seq, delivery_id, message_id, state, attempts, accepted_at, next_attempt_at,
                                 result, error, at)
      SELECT seq, id, message_id, state, attempts, accepted_at, next_attempt_at, result, error, accepted_at
      FROM u)
SELECT id FROM u;

-- name: expired
SELECT id, write_sent FROM queue_deliveries
WHERE active AND state = 'delivering'
  AND lease_until < COALESCE(%(now)s::float8, extract(epoch FROM clock_timestamp())::float8)
FOR UPDATE SKIP LOCKED;

-- name: expired_sent
-- Each change below is one statement: the row updated, given the next cursor from the counter row
-- (its lock held to commit, so cursors become visible in order), and appended to the change log.
-- The row's own lock is always taken first (FOR UPDATE before), the counter's last: no cycle.
WITH c AS (UPDATE queue_meta SET value = value + 1 WHERE key = 'seq' RETURNING value),
u AS (
UPDATE queue_deliveries
SET state = 'failed', active = FALSE, attempts = attempts + 1, error = %(error)s, lease_owner = NULL,
    lease_until = NULL, finished_at = COALESCE(%(now)s::float8, extract(epoch FROM clock_timestamp())::float8), seq = (SELECT value FROM c)
WHERE id = %(id)s
RETURNING *)
INSERT INTO queue_changes (seq, delivery_id, message_id, state, attempts, accepted_at, next_attempt_at, result, error, at)
SELECT seq, id, message_id, state, attempts, accepted_at, next_attempt_at, result, error,
       COALESCE(%(now)s::float8, extract(epoch FROM clock_timestamp())::float8)
FROM u
RETURNING seq;

-- name: give_back
WITH c AS (UPDATE queue_meta SET value = value + 1 WHERE key = 'seq' RETURNING value),
u AS (
UPDATE queue_deliveries
SET state = CASE WHEN attempts > 0 THEN 'retrying' ELSE 'queued' END, lease_owner = NULL,
    lease_until = NULL, write_sent = FALSE, seq = (SELECT value FROM c)
WHERE id = %(id)s AND state = 'delivering' AND (%(owner)s::text IS NULL OR lease_owner = %(owner)s)
RETURNING *)
INSERT INTO queue_changes (seq, delivery_id, message_id, state, attempts, accepted_at, next_attempt_at, result, error, at)
SELECT seq, id, message_id, state, attempts, accepted_at, next_attempt_at, result, error,
       COALESCE(%(now)s::float8, extract(epoch FROM clock_timestamp())::float8)
FROM u
RETURNING seq;

-- name: due_heads
-- A person's head (lowest active id), due, with nothing of that person in flight. One exception: while
-- the head is a track waiting for its contact (retrying, CONTACT_NOT_FOUND), the person's first queued
-- identify goes instead (it creates what the track waits for); every other event stays behind the track.
-- Exactly one candidate per person, so one claim (or two sidecars' claims) never takes two of a person.
-- Same rule as sqlite.py's DUE_HEADS.
SELECT d.id FROM queue_deliveries d
WHERE d.active AND d.state IN ('queued', 'retrying')
  AND d.next_attempt_at <= COALESCE(%(now)s::float8, extract(epoch FROM clock_timestamp())::float8)
  AND NOT EXISTS (SELECT 1 FROM queue_deliveries e
                  WHERE e.active AND e.person = d.person AND e.state = 'delivering')
  AND ((NOT EXISTS (SELECT 1 FROM queue_deliveries e
                    WHERE e.active AND e.person = d.person AND e.id < d.id)
        AND NOT (d.state = 'retrying' AND COALESCE(d.error->>'reason', '') = 'CONTACT_NOT_FOUND'
                 AND EXISTS (SELECT 1 FROM queue_deliveries i
                             WHERE i.active AND i.person = d.person AND i.id > d.id
                               AND i.event->>'kind' = 'identify')))
    OR (COALESCE(d.event->>'kind', '') = 'identify'
        AND NOT EXISTS (SELECT 1 FROM queue_deliveries i
                        WHERE i.active AND i.person = d.person AND i.id < d.id
                          AND i.event->>'kind' = 'identify')
        AND EXISTS (SELECT 1 FROM queue_deliveries w
                    WHERE w.active AND w.person = d.person AND w.state = 'retrying'
                      AND w.error->>'reason' = 'CONTACT_NOT_FOUND'
                      AND NOT EXISTS (SELECT 1 FROM queue_deliveries x
                                      WHERE x.active AND x.person = d.person AND x.id < w.id))))
ORDER BY d.next_attempt_at, d.id
LIMIT %(limit)s
FOR UPDATE SKIP LOCKED;

-- name: take
-- The heads due_heads locked, leased, each given its cursor in the order of ids and logged.
WITH c AS (UPDATE queue_meta SET value = value + cardinality(%(ids)s::bigint[]) WHERE key = 'seq'
           RETURNING value),
s AS (SELECT i.id, (SELECT value FROM c) - cardinality(%(ids)s::bigint[]) + i.n AS seq
      FROM unnest(%(ids)s::bigint[]) WITH ORDINALITY AS i(id, n)),
t AS (
UPDATE queue_deliveries d
SET state = 'delivering', lease_owner = %(owner)s, write_sent = FALSE, seq = s.seq,
    lease_until = COALESCE(%(now)s::float8, extract(epoch FROM clock_timestamp())::float8) + %(lease)s::float8
FROM s
WHERE d.id = s.id
RETURNING d.*),
l AS (INSERT INTO queue_changes (seq, delivery_id, message_id, state, attempts, accepted_at, next_attempt_at, result, error, at)
      SELECT seq, id, message_id, state, attempts, accepted_at, next_attempt_at, result, error, COALESCE(%(now)s::float8, extract(epoch FROM clock_timestamp())::float8)
      FROM t)
SELECT * FROM t;

-- name: heartbeat
UPDATE queue_deliveries
SET lease_until = COALESCE(%(now)s::float8, extract(epoch FROM clock_timestamp())::float8) + %(lease)s::float8
WHERE id = ANY(%(ids)s) AND lease_owner = %(owner)s AND state = 'delivering';

-- name: mark_sending
UPDATE queue_deliveries SET write_sent = TRUE
WHERE id = %(id)s AND lease_owner = %(owner)s AND state = 'delivering'
  AND lease_until >= COALESCE(%(now)s::float8, extract(epoch FROM clock_timestamp())::float8)
RETURNING id;

-- name: held
SELECT 1 FROM queue_deliveries
WHERE id = %(id)s AND lease_owner = %(owner)s AND state = 'delivering'
FOR UPDATE;

-- name: finish
WITH c AS (UPDATE queue_meta SET value = value + 1 WHERE key = 'seq' RETURNING value),
u AS (
UPDATE queue_deliveries
SET state = %(state)s, active = (%(state)s = 'retrying'), attempts = attempts + 1, result = %(result)s,
    error = %(error)s,
    next_attempt_at = COALESCE(%(next)s::float8, %(now)s::float8, extract(epoch FROM clock_timestamp())::float8),
    lease_owner = NULL, lease_until = NULL, write_sent = FALSE, forced = FALSE, seq = (SELECT value FROM c),
    finished_at = CASE WHEN %(state)s = 'retrying' THEN NULL
                       ELSE COALESCE(%(now)s::float8, extract(epoch FROM clock_timestamp())::float8) END
WHERE id = %(id)s
RETURNING *)
INSERT INTO queue_changes (seq, delivery_id, message_id, state, attempts, accepted_at, next_attempt_at, result, error, at)
SELECT seq, id, message_id, state, attempts, accepted_at, next_attempt_at, result, error,
       COALESCE(%(now)s::float8, extract(epoch FROM clock_timestamp())::float8)
FROM u
RETURNING seq;

-- name: wake_waiting
-- An identify delivered: the person's tracks waiting for their contact are due now, not at their
-- backoff's next step. Run before finish, so these rows' locks come before the counter's (no cycle).
UPDATE queue_deliveries w
SET next_attempt_at = LEAST(w.next_attempt_at,
                            COALESCE(%(now)s::float8, extract(epoch FROM clock_timestamp())::float8))
FROM queue_deliveries i
WHERE i.id = %(id)s AND COALESCE(i.event->>'kind', '') = 'identify'
  AND w.person = i.person AND w.active AND w.state = 'retrying'
  AND COALESCE(w.error->>'reason', '') = 'CONTACT_NOT_FOUND';

-- name: get
SELECT * FROM queue_deliveries WHERE message_id = %(message_id)s;

-- name: by_state
-- ListDeliveries' read: the status only, never the event column.
SELECT id, message_id, state, attempts, accepted_at, next_attempt_at, result, error
FROM queue_deliveries WHERE state = %(state)s AND id > %(after)s ORDER BY id LIMIT %(limit)s;

-- name: changes
-- The watch's read: the change log only (never the event column, never the deliveries table).
SELECT seq, message_id, state, attempts, accepted_at, next_attempt_at, result, error
FROM queue_changes WHERE seq > %(after)s ORDER BY seq LIMIT %(limit)s;

-- name: all_failed
SELECT id FROM queue_deliveries WHERE state = 'failed' ORDER BY id FOR UPDATE;

-- name: state_of
SELECT id, state FROM queue_deliveries WHERE message_id = %(message_id)s FOR UPDATE;

-- name: requeue
-- Afresh: attempts from 0 and the give-up clock from now; accepted_at stays the acceptance.
WITH c AS (UPDATE queue_meta SET value = value + 1 WHERE key = 'seq' RETURNING value),
u AS (
UPDATE queue_deliveries
SET state = 'queued', active = TRUE, forced = TRUE, finished_at = NULL, seq = (SELECT value FROM c), attempts = 0,
    retry_from = COALESCE(%(now)s::float8, extract(epoch FROM clock_timestamp())::float8),
    next_attempt_at = COALESCE(%(now)s::float8, extract(epoch FROM clock_timestamp())::float8)
WHERE id = %(id)s
RETURNING *)
INSERT INTO queue_changes (seq, delivery_id, message_id, state, attempts, accepted_at, next_attempt_at, result, error, at)
SELECT seq, id, message_id, state, attempts, accepted_at, next_attempt_at, result, error,
       COALESCE(%(now)s::float8, extract(epoch FROM clock_timestamp())::float8)
FROM u
RETURNING seq;

-- name: prune
DELETE FROM queue_deliveries WHERE state = 'delivered' AND finished_at < %(before)s;

-- name: prune_changes
-- Changes older than retention go, except each remaining event's last one (its state now).
DELETE FROM queue_changes c WHERE c.at < %(before)s
  AND NOT EXISTS (SELECT 1 FROM queue_deliveries d WHERE d.seq = c.seq);

-- name: depth
SELECT state, count(*) FROM queue_deliveries GROUP BY state;

-- name: oldest
SELECT min(accepted_at) FROM queue_deliveries WHERE active;
