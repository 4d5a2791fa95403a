'use strict';
// Enqueue and GetDelivery against a real sidecar on a SQLite store and the Trengo simulator: run by
// tests/test_node_client.py, which sets SIDECAR_QUEUE_ADDR (that sidecar) and SIM_URL.
const test = require('node:test');
const assert = require('node:assert/strict');
const { TrengoSidecarClient, TrengoSidecarError } = require('../src/client.js');

const { SIDECAR_QUEUE_ADDR, SIM_URL } = process.env;
const EMAIL_CHANNEL = 405980; // the channel tests/harness.py configures
const TERMINAL = ['DELIVERY_STATE_DELIVERED', 'DELIVERY_STATE_FAILED'];
const skip = !(SIDECAR_QUEUE_ADDR && SIM_URL)
  && 'set SIDECAR_QUEUE_ADDR and SIM_URL (pytest tests/test_node_client.py does)';

async function sim(method, path, body) {
  const response = await fetch(`${SIM_URL}/_sim${path}`, {
    method, headers: { 'content-type': 'application/json' }, body: body && JSON.stringify(body),
  });
  assert.ok(response.ok, `${method} /_sim${path}: ${response.status}`);
  return response.json();
}

async function settled(client, messageId) {
  const ends = Date.now() + 20_000;
  for (;;) {
    const status = await client.getDelivery(messageId);
    if (TERMINAL.includes(status.state)) return status;
    assert.ok(Date.now() < ends, `${messageId} did not settle: ${status.state}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

test('the Node client queues events and follows their delivery', { skip }, async (t) => {
  const client = new TrengoSidecarClient(SIDECAR_QUEUE_ADDR);
  t.after(() => client.close());
  t.beforeEach(() => sim('POST', '/reset'));

  await t.test('enqueued identify, track and sendEvent are delivered, in order', async () => {
    const before = Date.now();
    const first = await client.enqueueIdentify({
      userId: 'nq', traits: { email: 'nq.node@example.com', name: 'Nia Q' }, messageId: 'nq-1',
    });
    assert.deepEqual(first, { messageId: 'nq-1', duplicate: false, filteredReason: '' });
    const second = await client.enqueueTrack({
      userId: 'nq', event: 'Checked Out', context: { traits: { email: 'nq.node@example.com' } },
    });
    assert.equal(second.messageId.length, 32); // generated: the event had none
    const third = await client.enqueueSendEvent({ type: 'track', event: 'Product Purchased', userId: 'nq',
      messageId: 'nq-3', properties: { email: 'nq.node@example.com' } });
    assert.equal(third.duplicate, false);

    const identified = await settled(client, 'nq-1');
    assert.equal(identified.state, 'DELIVERY_STATE_DELIVERED');
    assert.equal(identified.attempts, 1);
    assert.equal(identified.result.action, 'ACTION_CREATE_CONTACT');
    assert.equal(identified.error, null);
    assert.ok(identified.acceptedAt instanceof Date);
    assert.ok(identified.acceptedAt.getTime() >= before - 1000 && identified.acceptedAt.getTime() <= Date.now());
    assert.equal(identified.nextAttemptAt, null);
    const { data: [contact, ...others] } = await sim('GET', '/contacts');
    assert.deepEqual(others, []);
    assert.deepEqual([contact.id, contact.name], [identified.result.contactId, 'Nia Q']);
    const tickets = [];
    for (const messageId of [second.messageId, 'nq-3']) {
      const done = await settled(client, messageId);
      assert.equal(done.state, 'DELIVERY_STATE_DELIVERED', JSON.stringify(done));
      tickets.push(done.result.ticketId);
    }
    const { data: stored } = await sim('GET', '/tickets');
    assert.deepEqual(stored.sort((a, b) => a.id - b.id).map((x) => [x.id, x.contact_id, x.subject]), [
      [tickets[0], contact.id, 'Cart was checked out'],
      [tickets[1], contact.id, 'Product Purchased from our store'],
    ]);
    const again = await client.enqueueIdentify({ traits: { email: 'nq.node@example.com' }, messageId: 'nq-1' });
    assert.equal(again.duplicate, true);
  });

  await t.test('a 422 fails the event with its error', async () => {
    await sim('POST', '/contacts', { name: 'Ro', identifier: 'ro.node@example.com', channel_id: EMAIL_CHANNEL });
    await sim('POST', '/faults', { method: 'POST', path: '/api/v2/tickets', status: 422, count: 1 });
    const { messageId } = await client.enqueueTrack({ userId: 'ro', event: 'Checked Out',
      context: { traits: { email: 'ro.node@example.com' } } });
    const failed = await settled(client, messageId);
    assert.equal(failed.state, 'DELIVERY_STATE_FAILED');
    assert.equal(failed.error.reason, 'TRENGO_REJECTED');
    assert.match(failed.error.message, /422/);
    assert.equal(failed.result, null);
    assert.deepEqual((await sim('GET', '/tickets')).data, []);
  });

  await t.test('bad input is refused naming the field, and nothing is queued', async () => {
    const invalid = await client.enqueueIdentify({ traits: { email: 'not an email' }, messageId: 'nq-bad' })
      .catch((e) => e);
    assert.ok(invalid instanceof TrengoSidecarError, String(invalid));
    assert.equal(invalid.codeName, 'INVALID_ARGUMENT');
    assert.equal(invalid.field, 'traits.email');
    const unmapped = await client.enqueueTrack({ event: 'Page Viewed', messageId: 'nq-unmapped',
      context: { traits: { email: 'a@b.io' } } }).catch((e) => e);
    assert.equal(unmapped.reason, 'EVENT_NOT_MAPPED');
    for (const messageId of ['nq-bad', 'nq-unmapped', 'never-sent']) {
      const missing = await client.getDelivery(messageId).catch((e) => e);
      assert.equal(missing.codeName, 'NOT_FOUND', String(missing));
      assert.equal(missing.reason, 'DELIVERY_NOT_FOUND');
    }
    await assert.rejects(client.enqueueIdentify({ traits: {}, dryRun: true }), TypeError);
  });

  await t.test('listDeliveries shows a failed event; retryDeliveries and watchDeliveries follow it home', async () => {
    await sim('POST', '/contacts', { name: 'Wa', identifier: 'wa.node@example.com', channel_id: EMAIL_CHANNEL });
    await sim('POST', '/faults', { method: 'POST', path: '/api/v2/tickets', status: 422, count: 1 });
    await client.enqueueTrack({ userId: 'wa', event: 'Checked Out', messageId: 'nq-w1',
      context: { traits: { email: 'wa.node@example.com' } } });
    assert.equal((await settled(client, 'nq-w1')).state, 'DELIVERY_STATE_FAILED');
    const page = await client.listDeliveries({ state: 'failed', limit: 1000 });
    const listed = page.deliveries.find((status) => status.messageId === 'nq-w1');
    assert.equal(listed.error.reason, 'TRENGO_REJECTED');
    assert.ok(listed.acceptedAt instanceof Date);
    assert.equal(page.nextPageToken, '');
    await assert.rejects(client.listDeliveries({ state: 'failedd' }), TypeError);
    const refused = await client.retryDeliveries({ messageIds: ['nq-1'] }).catch((e) => e); // delivered
    assert.equal(refused.codeName, 'FAILED_PRECONDITION');
    assert.equal(await client.retryDeliveries({ messageIds: ['nq-w1'] }), 1);

    const seen = [];
    for await (const update of client.watchDeliveries(0, { deadlineMs: 20_000 })) {
      seen.push(update);
      if (update.status.messageId === 'nq-w1' && update.status.state === 'DELIVERY_STATE_DELIVERED') break;
    }
    const states = seen.filter((u) => u.status.messageId === 'nq-w1').map((u) => u.status.state);
    assert.deepEqual(states.slice(-3), ['DELIVERY_STATE_QUEUED', 'DELIVERY_STATE_DELIVERING',
      'DELIVERY_STATE_DELIVERED']);
    assert.ok(states.includes('DELIVERY_STATE_FAILED'), states.join());
    const cursors = seen.map((u) => u.cursor);
    assert.deepEqual(cursors, [...cursors].sort((a, b) => a - b));
    const resumed = [];
    for await (const update of client.watchDeliveries(seen.at(-3).cursor, { deadlineMs: 20_000 })) {
      resumed.push(update.cursor);
      if (resumed.length === 2) break;
    }
    assert.deepEqual(resumed, cursors.slice(-2));
    const { data: tickets } = await sim('GET', '/tickets');
    assert.deepEqual(tickets.map((x) => x.subject), ['Cart was checked out']);
    const delivered = await client.getDelivery('nq-w1');
    assert.equal(delivered.result.ticketId, tickets[0].id);
  });
});
