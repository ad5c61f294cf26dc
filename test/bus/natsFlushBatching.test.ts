import { describe, expect, it } from 'vitest';
import { connectNatsBus } from '../../src/bus/NatsBus.js';
import { startNatsServer } from '../../src/testing/natsServer.js';

// Issue 12: nats-core flushed its outbound buffer in a microtask, so the messages that many
// promise chains (a daemon's flows) queue in one turn went out one socket write each. On
// NatsBus's own connections they go out once per turn, in order, none lost.

/** A bus and a reader of `subject` on their own connections, the reader's subscription on the server. */
async function publisherAndReader(url: string, subject: string) {
  const bus = await connectNatsBus({ servers: [url] });
  const reader = await connectNatsBus({ servers: [url] });
  const got: string[] = [];
  await reader.subscribe(subject, (m) => void got.push(m.string()));
  // A request round trip on the reader's connection: its SUB has reached the server.
  await reader.request(`${subject}.none`, '', { timeoutMs: 500 }).catch(() => undefined);
  const received = async (n: number) => {
    const deadline = Date.now() + 5_000;
    while (got.length < n && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 10));
    return got;
  };
  return { bus, reader, received };
}

interface Spied {
  protocol: { transport: { send(frame: Uint8Array): void } };
}

describe("a NatsBus connection's writes", () => {
  it('go out once per turn of the event loop, in order and all of them, however many promise chains queued them', async () => {
    await using server = await startNatsServer();
    const { bus, reader, received } = await publisherAndReader(server.url, 'burst.x');
    try {
      const transport = (bus.connection as unknown as Spied).protocol.transport;
      const send = transport.send.bind(transport);
      let writes = 0;
      transport.send = (frame: Uint8Array) => {
        writes++;
        send(frame);
      };
      // Chain i publishes after i microtask hops: with a flush per microtask, the flush the
      // first publish queued runs between the later ones (one write each).
      const hops = async (n: number) => {
        for (let i = 0; i < n; i++) await null;
      };
      await Promise.all(Array.from({ length: 200 }, (_, i) => hops(i).then(() => bus.publish('burst.x', String(i)))));
      await new Promise((resolve) => setImmediate(resolve));
      expect(writes).toBeLessThanOrEqual(2);
      await bus.publish('burst.x', 'last');
      expect(await received(201)).toEqual([...Array.from({ length: 200 }, (_, i) => String(i)), 'last']);
    } finally {
      await bus.close();
      await reader.close();
    }
  });

  it('are all sent when the bus closes right after them', async () => {
    await using server = await startNatsServer();
    const { bus, reader, received } = await publisherAndReader(server.url, 'close.x');
    try {
      for (let i = 0; i < 50; i++) await bus.publish('close.x', String(i));
      await bus.close();
      expect(await received(50)).toHaveLength(50);
    } finally {
      await reader.close();
    }
  });
});
