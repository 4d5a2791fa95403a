'use strict';
// Identify a person, open a ticket for them, preview an event with a dry run, and handle an error.
// Start a sidecar first (`make run` serves one on 127.0.0.1:50051 against a local Trengo simulator),
// then: node example.js   (SIDECAR_ADDR and SIDECAR_AUTH_TOKEN override the defaults)
const { TrengoSidecarClient, TrengoSidecarError } = require('./src/client.js');

async function main() {
  const client = new TrengoSidecarClient(process.env.SIDECAR_ADDR || '127.0.0.1:50051', {
    authToken: process.env.SIDECAR_AUTH_TOKEN, // the sidecar's authToken, when it has one
  });
  try {
    const contact = await client.identify({
      userId: 'user-42', traits: { email: 'ann@example.com', firstName: 'Ann', lastName: 'Lee' },
    });
    console.log('identify:', contact.action, 'contact', contact.contactId);

    const ticket = await client.track({
      userId: 'user-42', event: 'Product Purchased', context: { traits: { email: 'ann@example.com' } },
      messageId: 'order-1001', // sending it again within the idempotency window writes nothing twice
    });
    console.log('track:', ticket.action, 'ticket', ticket.ticketId);

    const preview = await client.sendEvent(
      { type: 'identify', userId: 'user-43', traits: { email: 'bo@example.com', name: 'Bo' } }, { dryRun: true });
    for (const call of preview.requests) console.log('dry run would send:', call.method, call.url, call.bodyJson);

    try {
      await client.track({ event: 'Page Viewed', context: { traits: { email: 'ann@example.com' } } });
    } catch (error) {
      if (!(error instanceof TrengoSidecarError)) throw error;
      console.log('track failed:', error.codeName, error.reason, error.retryable ? 'retryable' : 'not retryable');
    }
  } finally {
    client.close();
  }
}

main().catch((error) => {
  console.error(error);
  process.exitCode = 1;
});
