-- The queue's queries on SQLite, by name (sidecar/queue/sqlite.py runs them; postgres.sql is the same
-- queue on PostgreSQL). Its tables live in the state's file, on the state's connection and thread.
--
-- The migrate_N blocks are the queue's schema steps, in order; they carry no comments (the state's
-- migrate drops a statement that starts with one). Step 2: the Enqueue's trace context (W3C
-- traceparent, as JSON), so the delivery's span links to it. Step 3: every change of state, appended
-- with its own cursor, for WatchDeliveries (the row only holds its last one, so a retry's "queued
-- again" was overwritten before a watcher saw it); seeded with each row's last change, so a watcher
-- resuming across the upgrade misses nothing it could have seen before. Step 4: what the queue holds
-- for delivery (queueMaxDepth, queueMaxBytes): each row's stored bytes, and two counters kept in the
-- transactions that change them (acceptance, delivered, failed rows pruned), so Enqueue checks its room
-- without counting rows; seeded from the rows not delivered at the upgrade.

-- name: migrate_1
CREATE TABLE IF NOT EXISTS queue_meta (
  key TEXT PRIMARY KEY,
  value INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS queue_deliveries (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  message_id TEXT NOT NULL UNIQUE,
  person TEXT NOT NULL,
  event TEXT NOT NULL,
  state TEXT NOT NULL,
  active INTEGER NOT NULL DEFAULT 1,
  attempts INTEGER NOT NULL DEFAULT 0,
  accepted_at REAL NOT NULL,
  retry_from REAL NOT NULL,
  next_attempt_at REAL NOT NULL,
  lease_owner TEXT,
  lease_until REAL,
  write_sent INTEGER NOT NULL DEFAULT 0,
  forced INTEGER NOT NULL DEFAULT 0,
  result TEXT,
  error TEXT,
  seq INTEGER NOT NULL DEFAULT 0,
  finished_at REAL
);
CREATE INDEX IF NOT EXISTS queue_person_active ON queue_deliveries (person, id) WHERE active = 1;
CREATE INDEX IF NOT EXISTS queue_due ON queue_deliveries (next_attempt_at, id) WHERE active = 1;
CREATE INDEX IF NOT EXISTS queue_seq ON queue_deliveries (seq);
CREATE INDEX IF NOT EXISTS queue_state ON queue_deliveries (state, id);
INSERT OR IGNORE INTO queue_meta (key, value) VALUES ('seq', 0);

-- name: migrate_2
ALTER TABLE queue_deliveries ADD COLUMN trace TEXT;

-- name: migrate_3
CREATE TABLE IF NOT EXISTS queue_changes (
  seq INTEGER PRIMARY KEY,
  delivery_id INTEGER NOT NULL,
  message_id TEXT NOT NULL,
  state TEXT NOT NULL,
  attempts INTEGER NOT NULL,
  accepted_at REAL NOT NULL,
  next_attempt_at REAL NOT NULL,
  result TEXT,
  error TEXT,
  at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS queue_changes_at ON queue_changes (at);
INSERT OR IGNORE INTO queue_changes
SELECT seq, id, message_id, state, attempts, accepted_at, next_attempt_at, result, error,
       COALESCE(finished_at, accepted_at)
FROM queue_deliveries WHERE seq > 0;

-- name: migrate_4
ALTER TABLE queue_deliveries ADD COLUMN bytes INTEGER NOT NULL DEFAULT 0;
UPDATE queue_deliveries SET bytes = length(CAST(event AS BLOB)) WHERE state != 'delivered';
INSERT OR IGNORE INTO queue_meta (key, value)
SELECT 'held', count(*) FROM queue_deliveries WHERE state != 'delivered';
INSERT OR IGNORE INTO queue_meta (key, value)
SELECT 'held_bytes', coalesce(sum(bytes), 0) FROM queue_deliveries WHERE state != 'delivered';

-- name: next_seq
UPDATE queue_meta SET value = value + 1 WHERE key = 'seq' RETURNING value

-- name: set_seq
UPDATE queue_deliveries SET seq = ? WHERE id = ?

-- name: log_change
-- The row as it is now, appended to the change log under the cursor just given to it.
INSERT INTO queue_changes (seq, delivery_id, message_id, state, attempts, accepted_at, next_attempt_at, result, error, at) SELECT seq, id, message_id, state, attempts, accepted_at, next_attempt_at, result, error, ? FROM queue_deliveries WHERE id = ?

-- name: held_now
SELECT key, value FROM queue_meta WHERE key IN ('held', 'held_bytes')

-- name: add_held
UPDATE queue_meta SET value = value + CASE key WHEN 'held' THEN ? ELSE ? END WHERE key IN ('held', 'held_bytes')

-- name: delivered_held
-- A delivered event is no longer held for delivery: out of the limits' count.
UPDATE queue_meta SET value = value - CASE key WHEN 'held' THEN 1 ELSE (SELECT bytes FROM queue_deliveries WHERE id = ?) END WHERE key IN ('held', 'held_bytes')

-- name: insert_failed
-- Refused when accepted: failed at once, inactive; its cursor and change log entry follow.
INSERT INTO queue_deliveries (message_id, person, event, state, active, accepted_at, retry_from, next_attempt_at, trace, error, finished_at, bytes) VALUES (?, ?, ?, 'failed', 0, ?, ?, ?, ?, ?, ?, ?)

-- name: due_heads
-- The person's head (lowest active id), due, with nothing of that person in flight. One exception: while
-- the head is a track waiting for its contact (retrying, CONTACT_NOT_FOUND), the person's first queued
-- identify goes instead (it creates what the track waits for); every other event stays behind the track.
-- Exactly one candidate per person, so one claim (or two sidecars' claims) never takes two of a person.
-- Same rule as postgres.sql's due_heads.
SELECT id FROM queue_deliveries d
WHERE d.active = 1 AND d.state IN ('queued', 'retrying') AND d.next_attempt_at <= ?
  AND NOT EXISTS (SELECT 1 FROM queue_deliveries e
                  WHERE e.active = 1 AND e.person = d.person AND e.state = 'delivering')
  AND ((NOT EXISTS (SELECT 1 FROM queue_deliveries e
                    WHERE e.active = 1 AND e.person = d.person AND e.id < d.id)
        AND NOT (d.state = 'retrying'
                 AND COALESCE(json_extract(d.error, '$.reason'), '') = 'CONTACT_NOT_FOUND'
                 AND EXISTS (SELECT 1 FROM queue_deliveries i
                             WHERE i.active = 1 AND i.person = d.person AND i.id > d.id
                               AND json_extract(i.event, '$.kind') = 'identify')))
    OR (json_extract(d.event, '$.kind') = 'identify'
        AND NOT EXISTS (SELECT 1 FROM queue_deliveries i
                        WHERE i.active = 1 AND i.person = d.person AND i.id < d.id
                          AND json_extract(i.event, '$.kind') = 'identify')
        AND EXISTS (SELECT 1 FROM queue_deliveries w
                    WHERE w.active = 1 AND w.person = d.person AND w.state = 'retrying'
                      AND json_extract(w.error, '$.reason') = 'CONTACT_NOT_FOUND'
                      AND NOT EXISTS (SELECT 1 FROM queue_deliveries x
                                      WHERE x.active = 1 AND x.person = d.person AND x.id < w.id))))
ORDER BY d.next_attempt_at, d.id LIMIT ?

-- name: expired
-- Jobs whose lease ran out: their holder died (or stalled past the lease).
SELECT id, write_sent FROM queue_deliveries WHERE active = 1 AND state = 'delivering' AND lease_until < ?

-- name: expired_sent
-- An expired job whose write may have been sent: failed, not sent again.
UPDATE queue_deliveries SET state = 'failed', active = 0, attempts = attempts + 1, error = ?, lease_owner = NULL, lease_until = NULL, finished_at = ? WHERE id = ?

-- name: expired_unsent
-- An expired job with nothing written: back as it was (retrying if it had failed before).
UPDATE queue_deliveries SET state = CASE WHEN attempts > 0 THEN 'retrying' ELSE 'queued' END, lease_owner = NULL, lease_until = NULL WHERE id = ?

-- name: mark_sending
UPDATE queue_deliveries SET write_sent = 1 WHERE id = ? AND lease_owner = ? AND state = 'delivering' AND lease_until >= ?

-- name: holds
SELECT 1 FROM queue_deliveries WHERE id = ? AND lease_owner = ? AND state = 'delivering'

-- name: finish
UPDATE queue_deliveries SET state = ?, active = ?, attempts = attempts + 1, result = ?, error = ?, next_attempt_at = ?, lease_owner = NULL, lease_until = NULL, write_sent = 0, forced = 0, finished_at = ? WHERE id = ?

-- name: wake_waiting
-- An identify delivered: the person's tracks waiting for their contact are due now, not at their
-- backoff's next step (up to queueRetryMaxSeconds later).
UPDATE queue_deliveries SET next_attempt_at = MIN(next_attempt_at, ?)
WHERE active = 1 AND state = 'retrying'
  AND COALESCE(json_extract(error, '$.reason'), '') = 'CONTACT_NOT_FOUND'
  AND person = (SELECT i.person FROM queue_deliveries i
                WHERE i.id = ? AND COALESCE(json_extract(i.event, '$.kind'), '') = 'identify')

-- name: release
UPDATE queue_deliveries SET state = CASE WHEN attempts > 0 THEN 'retrying' ELSE 'queued' END, lease_owner = NULL, lease_until = NULL, write_sent = 0 WHERE id = ? AND lease_owner = ? AND state = 'delivering'

-- name: get
SELECT id, message_id, person, event, state, attempts, accepted_at, next_attempt_at, write_sent, forced, result, error, seq, retry_from, trace FROM queue_deliveries WHERE message_id = ?

-- name: listed
-- ListDeliveries' read: the status only, never the event column.
SELECT id, message_id, state, attempts, accepted_at, next_attempt_at, result, error FROM queue_deliveries WHERE state = ? AND id > ? ORDER BY id LIMIT ?

-- name: changes
-- The watch's read: the change log only (never the event column, never the deliveries table).
SELECT seq, message_id, state, attempts, accepted_at, next_attempt_at, result, error FROM queue_changes WHERE seq > ? ORDER BY seq LIMIT ?

-- name: failed_ids
SELECT id FROM queue_deliveries WHERE state = 'failed'

-- name: id_and_state
SELECT id, state FROM queue_deliveries WHERE message_id = ?

-- name: retry
-- Afresh: attempts from 0 and the give-up clock from now; accepted_at stays the acceptance.
UPDATE queue_deliveries SET state = 'queued', active = 1, forced = 1, attempts = 0, next_attempt_at = ?, retry_from = ?, finished_at = NULL WHERE id = ?

-- name: prune_delivered
DELETE FROM queue_deliveries WHERE state = 'delivered' AND finished_at < ?

-- name: prune_changes
-- Retention: changes older than the cutoff go, except each remaining event's last one (its state now).
DELETE FROM queue_changes WHERE at < ? AND NOT EXISTS (SELECT 1 FROM queue_deliveries d WHERE d.seq = queue_changes.seq)

-- name: failed_before
SELECT id, bytes FROM queue_deliveries WHERE state = 'failed' AND finished_at < ?

-- name: delete_changes_of
DELETE FROM queue_changes WHERE delivery_id = ?

-- name: delete_delivery
DELETE FROM queue_deliveries WHERE id = ?

-- name: depth
SELECT state, count(*) FROM queue_deliveries GROUP BY state

-- name: oldest
SELECT min(accepted_at) FROM queue_deliveries WHERE active = 1
