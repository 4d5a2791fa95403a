// Sends identify + track for people [from, to) through the real @rudderstack/rudder-sdk-node, flushes,
// and prints {"errors": [status or message, ...]} (one per event whose batch failed). Run by
// tests/sdk_clients.py with NODE_PATH=clients/node/node_modules.
'use strict';
const Analytics = require('@rudderstack/rudder-sdk-node');

async function main() {
  const [url, key, from, to, retries] = process.argv.slice(2);
  const errors = [];
  let answered = 0;
  const done = (err) => {
    answered += 1;
    if (err) errors.push(err.response ? err.response.status : String(err.message || err));
  };
  const client = new Analytics(key, {
    dataPlaneUrl: url, flushAt: 20, flushInterval: 200, logLevel: 'error',
    retryCount: Number(retries || 3),
    // With an errorHandler, each event's callback gets the HTTP error itself (its status).
    errorHandler: () => {},
  });
  for (let n = Number(from); n < Number(to); n++) {
    const person = `p${String(n).padStart(3, '0')}`;
    const email = `${person}@example.com`;
    client.identify({ userId: person, traits: { email, name: `Person ${n}` } }, done);
    client.track({ userId: person, event: 'Product Purchased', properties: { revenue: n },
                   context: { traits: { email } } }, done);
  }
  await client.flush();
  // Callbacks run on setImmediate after their batch settles: wait for every event's answer.
  const events = 2 * (Number(to) - Number(from));
  for (let waited = 0; answered < events && waited < 30000; waited += 20) {
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  if (answered < events) errors.push(`only ${answered} of ${events} events answered`);
  process.stdout.write(JSON.stringify({ errors }) + '\n');
}

main().catch((err) => { process.stderr.write(String(err.stack || err) + '\n'); process.exit(1); });
