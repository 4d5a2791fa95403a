'use strict';
// Against a real sidecar and the Trengo simulator: run by tests/test_node_client.py, which sets
// SIDECAR_ADDR, SIM_URL (the simulator's root), and SIDECAR_AUTH_ADDR/SIDECAR_AUTH_TOKEN.
const test = require('node:test');
const assert = require('node:assert/strict');
const { TrengoSidecarClient, TrengoSidecarError, grpc } = require('../src/client.js');

const { SIDECAR_ADDR, SIM_URL, SIDECAR_AUTH_ADDR, SIDECAR_AUTH_TOKEN } = process.env;
const EMAIL_CHANNEL = 405980; // the channel tests/harness.py configures
const skip = !(SIDECAR_ADDR && SIM_URL) && 'set SIDECAR_ADDR and SIM_URL (pytest tests/test_node_client.py does)';

async function sim(method, path, body) {
  const response = await fetch(`${SIM_URL}/_sim${path}`, {
    method, headers: { 'content-type': 'application/json' }, body: body && JSON.stringify(body),
  });
  assert.ok(response.ok, `${method} /_sim${path}: ${response.status}`);
  return response.json();
}
const simRequests = async () => (await sim('GET', '/requests')).requests
  .map((r) => ({ method: r.method, path: r.path.replace('/api/v2', ''), body: r.body }));

test('the Node client against a real sidecar', { skip }, async (t) => {
  const client = new TrengoSidecarClient(SIDECAR_ADDR);
  t.after(() => client.close());
  t.beforeEach(() => sim('POST', '/reset'));

  await t.test('identify creates the contact', async () => {
    const result = await client.identify({
      userId: 'u1', traits: { email: 'ann.node@example.com', firstName: 'Ann', lastName: 'Lee' }, messageId: 'n-1',
    });
    assert.equal(result.action, 'ACTION_CREATE_CONTACT');
    assert.equal(result.channelId, EMAIL_CHANNEL);
    assert.equal(result.messageId, 'n-1');
    const post = (await simRequests()).filter((r) => r.method === 'POST');
    assert.deepEqual(post, [{ method: 'POST', path: `/channels/${EMAIL_CHANNEL}/contacts`,
      body: { name: 'Ann Lee', identifier: 'ann.node@example.com', channel_id: EMAIL_CHANNEL } }]);
    const { data: contacts } = await sim('GET', '/contacts');
    assert.deepEqual(contacts.map((c) => [c.id, c.name]), [[result.contactId, 'Ann Lee']]);
  });

  await t.test('deliver streams events and answers each with its result or its error', async () => {
    const traits = { email: 'streamed.node@example.com' };
    async function* events() {
      yield ['a', { type: 'identify', userId: 'streamed', traits: { ...traits, name: 'Stream' } }];
      yield ['b', { type: 'track', userId: 'streamed', event: 'Checked Out', context: { traits } }];
      yield ['c', { type: 'track', userId: 'streamed', event: 'Not Mapped', context: { traits } }];
    }
    const answers = {};
    for await (const answer of client.deliver(events())) answers[answer.id] = answer;
    assert.deepEqual(Object.keys(answers).sort(), ['a', 'b', 'c']);
    assert.equal(answers.a.result.action, 'ACTION_CREATE_CONTACT');
    assert.equal(answers.a.error, null);
    assert.equal(answers.b.result.action, 'ACTION_CREATE_TICKET');
    assert.equal(answers.c.result, null);
    assert.equal(answers.c.error.codeName, 'FAILED_PRECONDITION');
    assert.equal(answers.c.error.reason, 'EVENT_NOT_MAPPED');
    const { data: tickets } = await sim('GET', '/tickets');
    assert.deepEqual(tickets.map((x) => [x.id, x.subject]), [[answers.b.result.ticketId, 'Cart was checked out']]);
    const dry = [];
    for await (const answer of client.deliver([['x', { type: 'identify', traits: { email: 'x.node@example.com' } }]],
      { dryRun: true })) dry.push(answer);
    assert.equal(dry[0].result.dryRun, true);
    assert.equal((await sim('GET', '/contacts')).data.length, 1);
  });

  await t.test('track opens a ticket with the rendered subject', async () => {
    const contact = await sim('POST', '/contacts',
      { name: 'Bo', identifier: 'bo.node@example.com', channel_id: EMAIL_CHANNEL });
    const result = await client.track({
      event: 'Added to cart', properties: { revenue: 2000 }, context: { traits: { email: 'bo.node@example.com' } },
    });
    assert.equal(result.action, 'ACTION_CREATE_TICKET');
    assert.equal(result.contactId, contact.id);
    const { data: tickets } = await sim('GET', '/tickets');
    assert.deepEqual(tickets.map((x) => [x.id, x.contact_id, x.subject]),
      [[result.ticketId, contact.id, 'Product was of value:2000']]);
  });

  await t.test('sendEvent takes RudderStack JSON; a dry run writes nothing', async () => {
    const event = { type: 'identify', userId: 'u2', context: { traits: { email: 'cy.node@example.com', name: 'Cy' } } };
    const dry = await client.sendEvent(event, { dryRun: true });
    assert.equal(dry.dryRun, true);
    assert.equal(dry.action, 'ACTION_CREATE_CONTACT');
    assert.deepEqual(dry.requests.map((r) => [r.method, r.statusCode]).at(-1), ['POST', 0]);
    assert.equal(dry.requests.at(-1).headers.Authorization?.includes('test-token'), false);
    assert.deepEqual((await simRequests()).filter((r) => r.method !== 'GET'), []);
    const real = await client.sendEvent(event);
    assert.equal(real.dryRun, false);
    assert.equal((await sim('GET', '/contacts')).data[0].id, real.contactId);
  });

  await t.test('an unmapped event is FAILED_PRECONDITION / EVENT_NOT_MAPPED, and Trengo is not called', async () => {
    const error = await client.track({ event: 'Page Viewed', context: { traits: { email: 'a@b.io' } } })
      .catch((e) => e);
    assert.ok(error instanceof TrengoSidecarError, String(error));
    assert.equal(error.code, grpc.status.FAILED_PRECONDITION);
    assert.equal(error.reason, 'EVENT_NOT_MAPPED');
    assert.equal(error.domain, 'trengo-sidecar.v1');
    assert.match(error.message, /Page Viewed/);
    assert.equal(error.retryable, false);
    assert.equal(error.retryDelayMs, null);
    assert.deepEqual(await simRequests(), []);
  });

  await t.test('an event whose integrations exclude Trengo is ACTION_FILTERED, and Trengo is not called', async () => {
    const event = { type: 'identify', integrations: { All: true, Trengo: false },
      context: { traits: { email: 'dee.node@example.com' } } };
    const result = await client.sendEvent(event);
    assert.equal(result.action, 'ACTION_FILTERED');
    assert.equal(result.filteredReason, 'integrations.Trengo is false');
    assert.deepEqual(result.requests, []);
    assert.deepEqual(await simRequests(), []);
  });

  await t.test('a malformed identify is INVALID_ARGUMENT naming the field', async () => {
    const error = await client.identify({ traits: { email: 'not an email' } }).catch((e) => e);
    assert.equal(error.codeName, 'INVALID_ARGUMENT');
    assert.equal(error.field, 'traits.email');
    assert.deepEqual(await simRequests(), []);
  });

  await t.test('Trengo answering 429 is a retryable RESOURCE_EXHAUSTED with its delay', async () => {
    // Retry-After beyond the call's deadline: the sidecar gives up at once and passes the delay on.
    // On the e-mail channel a new address is created at once: the create is the call refused.
    await sim('POST', '/faults', { method: 'POST', path: `/api/v2/channels/${EMAIL_CHANNEL}/contacts`, status: 429,
      count: 1, headers: { 'Retry-After': '120' } });
    const error = await client.identify({ traits: { email: 'dee.node@example.com' } }, { deadlineMs: 5000 })
      .catch((e) => e);
    assert.equal(error.codeName, 'RESOURCE_EXHAUSTED', String(error));
    assert.equal(error.reason, 'RATE_LIMITED');
    assert.equal(error.retryable, true);
    assert.equal(error.retryDelayMs, 120_000);
    assert.deepEqual((await simRequests()).filter((r) => r.method === 'POST').length, 1);
  });

  await t.test("gRPC's own oversized-message RESOURCE_EXHAUSTED is not retryable", async () => {
    const small = new TrengoSidecarClient(SIDECAR_ADDR, { channelOptions: { 'grpc.max_send_message_length': 256 } });
    const error = await small.identify({ traits: { email: 'big.node@example.com', bio: 'x'.repeat(1024) } })
      .catch((e) => e);
    small.close();
    assert.ok(error instanceof TrengoSidecarError, String(error));
    assert.equal(error.codeName, 'RESOURCE_EXHAUSTED', String(error));
    assert.equal(error.reason, null);
    assert.equal(error.retryDelayMs, null);
    assert.equal(error.retryable, false);
    assert.deepEqual(await simRequests(), []);
  });
});

test('authToken is sent as authorization: Bearer', { skip: skip || (!SIDECAR_AUTH_ADDR && 'no SIDECAR_AUTH_ADDR') },
  async () => {
    await sim('POST', '/reset');
    const anonymous = new TrengoSidecarClient(SIDECAR_AUTH_ADDR);
    const error = await anonymous.identify({ traits: { email: 'eve.node@example.com' } }).catch((e) => e);
    anonymous.close();
    assert.equal(error.codeName, 'UNAUTHENTICATED');
    assert.equal(error.reason, 'CALLER_UNAUTHENTICATED');
    const client = new TrengoSidecarClient(SIDECAR_AUTH_ADDR, { authToken: SIDECAR_AUTH_TOKEN });
    const result = await client.identify({ traits: { email: 'eve.node@example.com' } });
    client.close();
    assert.equal(result.action, 'ACTION_CREATE_CONTACT');
    assert.deepEqual((await sim('GET', '/contacts')).data.map((c) => c.identifier), ['eve.node@example.com']);
  });
