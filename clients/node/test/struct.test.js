'use strict';
// Unit tests: no sidecar needed.
const test = require('node:test');
const assert = require('node:assert/strict');
const { TrengoSidecarClient, TrengoSidecarError, TrengoSidecar, toStruct, fromStruct, grpc } = require('../src/client.js');

test('plain objects survive the wire as google.protobuf.Struct', () => {
  const event = { type: 'track', n: 2.5, ok: false, none: null, list: [1, 'a', { b: [] }], at: new Date(0) };
  const codec = TrengoSidecar.service.SendEvent;
  const decoded = codec.requestDeserialize(codec.requestSerialize({ event: toStruct(event), dryRun: true }));
  assert.deepEqual(fromStruct(decoded.event), { ...event, at: '1970-01-01T00:00:00.000Z' });
  assert.equal(decoded.dryRun, true);
});

test('undefined fields are left out; non-objects are refused', () => {
  assert.deepEqual(fromStruct(toStruct({ a: undefined, b: 1 })), { b: 1 });
  assert.equal(toStruct(undefined), undefined);
  assert.throws(() => toStruct([1]), TypeError);
  assert.throws(() => toStruct({ big: 1n }), /bigint/);
});

test('unknown request fields reject the promise instead of being dropped silently', async () => {
  const client = new TrengoSidecarClient('127.0.0.1:1');
  await assert.rejects(client.identify({ user_id: 'u1' }), /unknown field\(s\) user_id/);
  client.close();
});

test('an unreachable sidecar is a retryable UNAVAILABLE without a reason', async () => {
  const client = new TrengoSidecarClient('127.0.0.1:1');
  const error = await client.track({ event: 'x' }, { deadlineMs: 5000 }).catch((e) => e);
  assert.ok(error instanceof TrengoSidecarError, String(error));
  assert.equal(error.code, grpc.status.UNAVAILABLE);
  assert.equal(error.reason, null);
  assert.equal(error.retryable, true);
  client.close();
});
