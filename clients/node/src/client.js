'use strict';
// A promise client of the Trengo sidecar. The contract is loaded at run time from
// protos/trengo/sidecar/v1/sidecar.proto: nothing is generated.

const path = require('node:path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');
const protobuf = require('protobufjs');

const PROTO_DIR = path.resolve(__dirname, '../../../protos');
const RPC_PROTO_DIR = path.resolve(__dirname, '../protos'); // vendored google/rpc/*.proto

// google/protobuf/struct.proto resolves from the copies bundled in protobufjs.
const definition = protoLoader.loadSync('trengo/sidecar/v1/sidecar.proto', {
  includeDirs: [PROTO_DIR],
  longs: Number, // contact and ticket ids are int64; Trengo's stay far below 2^53
  enums: String, // action: 'ACTION_CREATE_CONTACT', ...
  defaults: true,
  oneofs: true,
});
const { TrengoSidecar } = grpc.loadPackageDefinition(definition).trengo.sidecar.v1;

const DELIVERY_STATES = definition['trengo.sidecar.v1.DeliveryState'].type.value.map((v) => v.name);

const rpcRoot = new protobuf.Root();
rpcRoot.resolvePath = (_origin, target) => path.join(RPC_PROTO_DIR, target);
rpcRoot.loadSync(['google/rpc/status.proto', 'google/rpc/error_details.proto']);
const Status = rpcRoot.lookupType('google.rpc.Status');
const DETAILS = Object.fromEntries(['ErrorInfo', 'RetryInfo', 'BadRequest'].map(
  (name) => [`google.rpc.${name}`, rpcRoot.lookupType(`google.rpc.${name}`)]));

const CODE_NAMES = Object.fromEntries(Object.entries(grpc.status).map(([name, code]) => [code, name]));
const REQUEST_FIELDS = {
  Identify: ['userId', 'anonymousId', 'traits', 'context', 'externalIds', 'messageId', 'dryRun'],
  Track: ['userId', 'anonymousId', 'event', 'properties', 'context', 'externalIds', 'messageId', 'dryRun'],
};

/** A plain JSON-like JS value as a google.protobuf.Value (JSON.stringify's rules). */
function toValue(value) {
  if (value !== null && typeof value === 'object' && typeof value.toJSON === 'function') value = value.toJSON();
  if (value === null || value === undefined) return { nullValue: 'NULL_VALUE' };
  switch (typeof value) {
    case 'number': return Number.isFinite(value) ? { numberValue: value } : { nullValue: 'NULL_VALUE' };
    case 'string': return { stringValue: value };
    case 'boolean': return { boolValue: value };
    case 'object':
      return Array.isArray(value)
        ? { listValue: { values: value.map(toValue) } }
        : { structValue: toStruct(value) };
    default: throw new TypeError(`a ${typeof value} cannot be sent in a google.protobuf.Struct`);
  }
}

/** A plain JS object as a google.protobuf.Struct; undefined stays undefined (field not set). */
function toStruct(object) {
  if (object === undefined || object === null) return undefined;
  if (typeof object !== 'object' || Array.isArray(object)) {
    throw new TypeError(`expected a plain object for a google.protobuf.Struct, got ${JSON.stringify(object)}`);
  }
  const fields = {};
  for (const [key, value] of Object.entries(object)) {
    if (value !== undefined) fields[key] = toValue(value);
  }
  return { fields };
}

/** A google.protobuf.Value (decoded, or as toValue builds it) as a plain JS value. */
function fromValue(value) {
  const kind = value && (value.kind || Object.keys(value).find((key) => value[key] !== undefined));
  switch (kind) {
    case 'numberValue': return value.numberValue;
    case 'stringValue': return value.stringValue;
    case 'boolValue': return value.boolValue;
    case 'structValue': return fromStruct(value.structValue);
    case 'listValue': return (value.listValue.values || []).map(fromValue);
    default: return null;
  }
}

function fromStruct(struct) {
  if (!struct) return undefined;
  return Object.fromEntries(Object.entries(struct.fields || {}).map(([k, v]) => [k, fromValue(v)]));
}

/** A failed call: gRPC code, ErrorInfo reason, BadRequest field, RetryInfo delay. */
class TrengoSidecarError extends Error {
  constructor(grpcError) {
    const codeName = CODE_NAMES[grpcError.code] || 'UNKNOWN';
    super(`${codeName}: ${grpcError.details || grpcError.message}`, { cause: grpcError });
    this.name = 'TrengoSidecarError';
    this.code = grpcError.code;
    this.codeName = codeName;
    this.details = grpcError.details || '';
    this.reason = null; // ErrorInfo.reason, e.g. 'EVENT_NOT_MAPPED'; null when the sidecar sent none
    this.domain = null;
    this.errorMetadata = {};
    this.field = null; // BadRequest: the request field at fault
    this.retryDelayMs = null; // RetryInfo: wait this long, then the same call can succeed
    for (const detail of decodeDetails(grpcError.metadata)) {
      if (detail.type === 'google.rpc.ErrorInfo') {
        this.reason = detail.reason;
        this.domain = detail.domain;
        this.errorMetadata = detail.metadata || {};
      } else if (detail.type === 'google.rpc.BadRequest') {
        this.field = detail.fieldViolations?.[0]?.field ?? null;
      } else if (detail.type === 'google.rpc.RetryInfo') {
        const delay = detail.retryDelay || {};
        this.retryDelayMs = (delay.seconds || 0) * 1000 + (delay.nanos || 0) / 1e6;
      }
    }
    // The same rule as the Python client. UNAVAILABLE: Trengo (or the sidecar) is briefly away,
    // except a write whose outcome is unknown: resend that only with the same messageId.
    // RESOURCE_EXHAUSTED only with a RetryInfo delay (a rate limit): without one it is gRPC's own
    // "message larger than max", which the same call hits again.
    this.retryable = this.reason !== 'TRENGO_OUTCOME_UNKNOWN' && (codeName === 'UNAVAILABLE'
      || (codeName === 'RESOURCE_EXHAUSTED' && this.retryDelayMs !== null));
  }
}

/** The details of the google.rpc.Status in the grpc-status-details-bin trailer, decoded. */
function decodeDetails(metadata) {
  const [bin] = metadata ? metadata.get('grpc-status-details-bin') : [];
  if (!bin) return [];
  try {
    return Status.decode(bin).details.flatMap((any) => {
      const url = any.type_url ?? any.typeUrl ?? ''; // protobufjs's bundled Any keeps snake_case
      const type = url.slice(url.lastIndexOf('/') + 1);
      if (!DETAILS[type]) return [];
      return [{ type, ...DETAILS[type].toObject(DETAILS[type].decode(any.value), { longs: Number }) }];
    });
  } catch {
    return []; // a corrupt trailer must not hide the gRPC code and message
  }
}

function checkFields(method, request, without = []) {
  if (request === null || typeof request !== 'object') throw new TypeError(`${method} takes an object`);
  const known = REQUEST_FIELDS[method].filter((key) => !without.includes(key));
  const unknown = Object.keys(request).filter((key) => !known.includes(key));
  if (unknown.length) {
    throw new TypeError(`${method}: unknown field(s) ${unknown.join(', ')}; known: ${known.join(', ')}`);
  }
}

/** A google.protobuf.Timestamp ({ seconds, nanos }) as a Date; null when unset. */
function toDate(timestamp) {
  if (!timestamp) return null;
  return new Date(Number(timestamp.seconds || 0) * 1000 + Math.floor((timestamp.nanos || 0) / 1e6));
}

/** A DeliveryStatus with its times as Dates (null when unset). */
function toStatus(status) {
  return { ...status, acceptedAt: toDate(status.acceptedAt), nextAttemptAt: toDate(status.nextAttemptAt) };
}

/** A DeliverError with the name of its gRPC code. */
function toDeliverError(error) {
  return { ...error, codeName: CODE_NAMES[error.code] || 'UNKNOWN' };
}

/** A server stream as an async iterable of converted messages; leaving the loop early cancels the call,
 * and a failed call throws a TrengoSidecarError. */
async function* readAll(call, convert) {
  let done = false;
  try {
    for await (const message of call) yield convert(message);
    done = true;
  } catch (error) {
    throw error instanceof TypeError ? error : new TrengoSidecarError(error);
  } finally {
    if (!done) {
      call.on('error', () => {}); // the CANCELLED that cancel() causes is expected, not a failure
      call.cancel();
    }
  }
}

class TrengoSidecarClient {
  /**
   * @param {string} address host:port of the sidecar
   * @param {{authToken?: string, credentials?: grpc.ChannelCredentials, channelOptions?: object}} options
   */
  constructor(address, { authToken, credentials, channelOptions } = {}) {
    this.authToken = authToken;
    this.stub = new TrengoSidecar(address, credentials || grpc.credentials.createInsecure(), channelOptions);
  }

  /** Create or update the Trengo contact of a person; traits and context are plain objects. */
  identify(request = {}, callOptions = {}) {
    return this.#call('Identify', () => {
      checkFields('Identify', request);
      return { ...request, traits: toStruct(request.traits), context: toStruct(request.context) };
    }, callOptions);
  }

  /** Open a Trengo ticket; properties and context are plain objects. */
  track(request = {}, callOptions = {}) {
    return this.#call('Track', () => {
      checkFields('Track', request);
      return { ...request, properties: toStruct(request.properties), context: toStruct(request.context) };
    }, callOptions);
  }

  /** Deliver a RudderStack/Segment-spec event, as its plain JSON object. */
  sendEvent(event, { dryRun = false, ...callOptions } = {}) {
    return this.#call('SendEvent', () => ({ event: toStruct(event), dryRun }), callOptions);
  }

  // --- the queue: accepted now, delivered at Trengo's pace (the sidecar needs a durable store) ---

  /** Queue an identify (the fields of identify() but dryRun); resolves once the sidecar has stored it:
   * { messageId, duplicate, filteredReason }. */
  enqueueIdentify(request = {}, callOptions = {}) {
    return this.#call('Enqueue', () => {
      checkFields('Identify', request, ['dryRun']);
      return { identify: { ...request, traits: toStruct(request.traits), context: toStruct(request.context) } };
    }, callOptions);
  }

  /** Queue a track (the fields of track() but dryRun); resolves as enqueueIdentify does. */
  enqueueTrack(request = {}, callOptions = {}) {
    return this.#call('Enqueue', () => {
      checkFields('Track', request, ['dryRun']);
      return { track: { ...request, properties: toStruct(request.properties), context: toStruct(request.context) } };
    }, callOptions);
  }

  /** Queue a RudderStack/Segment-spec event, as its plain JSON object. */
  enqueueSendEvent(event, callOptions = {}) {
    return this.#call('Enqueue', () => ({ sendEvent: { event: toStruct(event) } }), callOptions);
  }

  /** Where a queued event is: { messageId, state ('DELIVERY_STATE_DELIVERED', ...), attempts, result,
   * error, acceptedAt, nextAttemptAt } with the times as Dates (null when unset). An unknown messageId
   * rejects with NOT_FOUND / DELIVERY_NOT_FOUND. */
  async getDelivery(messageId, callOptions = {}) {
    return toStatus(await this.#call('GetDelivery', () => ({ messageId }), callOptions));
  }

  // --- streams, and the operator's view of the queue ---

  /**
   * Many RudderStack/Segment-spec events over one Deliver stream. `events`: an array or (async)
   * iterable of [id, event] pairs. Resolves nothing up front: returns an async iterable of
   * { id, result, error } (result or error null), one per event as each is done (a person's events keep
   * their order, others' may overtake). A failed event carries `error` ({ code, codeName, message,
   * reason, field, retryAfterSeconds }) and the stream goes on; a failure of the whole stream throws a
   * TrengoSidecarError. callOptions: dryRun, deadlineMs (default: none), requestId.
   */
  deliver(events, { dryRun = false, ...callOptions } = {}) {
    const call = this.stub.Deliver(this.#metadata(callOptions), this.#options(callOptions));
    const writing = (async () => {
      for await (const [id, event] of events) {
        if (!call.write({ id, sendEvent: { event: toStruct(event), dryRun } })) {
          await new Promise((resolve) => call.once('drain', resolve));
        }
      }
      call.end();
    })();
    writing.catch((error) => call.destroy(error)); // a bad event (TypeError) ends the stream with it
    return readAll(call, (response) => ({
      id: response.id,
      result: response.outcome === 'result' ? response.result : null,
      error: response.outcome === 'error' ? toDeliverError(response.error) : null,
    }));
  }

  /** Every change of queued events' states after `cursor` (0: the oldest kept), oldest first, then as they
   * happen: an async iterable of { cursor, status } (status as getDelivery() returns it). Stop with
   * `break`; keep the last cursor seen: resuming from it misses nothing. callOptions: deadlineMs, requestId. */
  watchDeliveries(cursor = 0, callOptions = {}) {
    const call = this.stub.WatchDeliveries({ cursor }, this.#metadata(callOptions), this.#options(callOptions));
    return readAll(call, (update) => ({ cursor: update.cursor, status: toStatus(update.status) }));
  }

  /** Accepted events in one state ('failed' by default; or 'DELIVERY_STATE_FAILED' ...), oldest first:
   * { deliveries: [status, ...], nextPageToken } ('' on the last page). */
  async listDeliveries({ state = 'failed', limit = 100, pageToken = '' } = {}, callOptions = {}) {
    const page = await this.#call('ListDeliveries', () => {
      const name = String(state).toUpperCase();
      const full = name.startsWith('DELIVERY_STATE_') ? name : `DELIVERY_STATE_${name}`;
      if (!DELIVERY_STATES.includes(full)) {
        throw new TypeError(`listDeliveries: unknown state ${JSON.stringify(state)}; known: ${DELIVERY_STATES.join(', ')}`);
      }
      return { state: full, limit, pageToken };
    }, callOptions);
    return { deliveries: page.deliveries.map(toStatus), nextPageToken: page.nextPageToken };
  }

  /** Queue failed events again: { messageIds } or { allFailed: true }; resolves to how many were. An
   * unknown id rejects with NOT_FOUND, one not failed with FAILED_PRECONDITION: then none is queued. */
  async retryDeliveries({ messageIds = [], allFailed = false } = {}, callOptions = {}) {
    const answer = await this.#call('RetryDeliveries', () => ({ messageIds, allFailed }), callOptions);
    return answer.retried;
  }

  close() {
    this.stub.close();
  }

  #metadata({ requestId } = {}) {
    const metadata = new grpc.Metadata();
    if (this.authToken) metadata.set('authorization', `Bearer ${this.authToken}`);
    if (requestId) metadata.set('x-request-id', requestId);
    return metadata;
  }

  #options({ deadlineMs } = {}) {
    return deadlineMs ? { deadline: new Date(Date.now() + deadlineMs) } : {};
  }

  /** callOptions: deadlineMs (default none), requestId (sent as x-request-id). */
  #call(method, buildRequest, { deadlineMs, requestId } = {}) {
    return new Promise((resolve, reject) => {
      const request = buildRequest(); // a TypeError here rejects the promise
      const metadata = this.#metadata({ requestId });
      this.stub[method](request, metadata, this.#options({ deadlineMs }), (error, result) => {
        if (error) reject(new TrengoSidecarError(error));
        else resolve(result);
      });
    });
  }
}

module.exports = { TrengoSidecarClient, TrengoSidecarError, toStruct, fromStruct, grpc, TrengoSidecar };
