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

// A grpc-js error as the sidecar sends it: the google.rpc.Status in the grpc-status-details-bin trailer.
const path = require('node:path');
const protobuf = require('protobufjs');

const rpc = new protobuf.Root();
rpc.resolvePath = (_origin, target) => path.join(__dirname, '../protos', target);
rpc.loadSync(['google/rpc/status.proto', 'google/rpc/error_details.proto']);

function grpcError(codeName, { reason, delaySeconds } = {}) {
  const pack = (type, value) => {
    const message = rpc.lookupType(`google.rpc.${type}`);
    return { type_url: `type.googleapis.com/google.rpc.${type}`, value: message.encode(message.create(value)).finish() };
  };
  const details = [];
  if (reason) details.push(pack('ErrorInfo', { reason, domain: 'trengo-sidecar.v1' }));
  if (delaySeconds !== undefined) details.push(pack('RetryInfo', { retryDelay: { seconds: delaySeconds } }));
  const metadata = new grpc.Metadata();
  if (details.length) {
    const Status = rpc.lookupType('google.rpc.Status');
    metadata.set('grpc-status-details-bin',
      Buffer.from(Status.encode(Status.create({ code: grpc.status[codeName], message: 'm', details })).finish()));
  }
  return Object.assign(new Error('m'), { code: grpc.status[codeName], details: 'm', metadata });
}

test('retryable: UNAVAILABLE unless the outcome is unknown; RESOURCE_EXHAUSTED only with a RetryInfo delay', () => {
  const cases = [
    ['UNAVAILABLE', {}, true],
    ['UNAVAILABLE', { reason: 'TRENGO_UNAVAILABLE' }, true],
    ['UNAVAILABLE', { reason: 'TRENGO_OUTCOME_UNKNOWN' }, false],
    ['UNAVAILABLE', { reason: 'TRENGO_OUTCOME_UNKNOWN', delaySeconds: 1 }, false],
    ['RESOURCE_EXHAUSTED', { reason: 'RATE_LIMITED', delaySeconds: 1 }, true],
    ['RESOURCE_EXHAUSTED', { reason: 'RATE_LIMITED' }, false],
    ['RESOURCE_EXHAUSTED', {}, false], // gRPC's own "message larger than max": no details at all
    ['FAILED_PRECONDITION', { reason: 'DUPLICATE_CONTACTS' }, false],
  ];
  for (const [codeName, details, retryable] of cases) {
    const error = new TrengoSidecarError(grpcError(codeName, details));
    assert.equal(error.codeName, codeName);
    assert.equal(error.reason, details.reason ?? null);
    assert.equal(error.retryDelayMs, details.delaySeconds === undefined ? null : details.delaySeconds * 1000);
    assert.equal(error.retryable, retryable, `${codeName} ${JSON.stringify(details)}`);
  }
});
