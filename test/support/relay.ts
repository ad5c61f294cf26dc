import { connect, createServer, type Server, type Socket } from 'node:net';
import { freePort } from '../../src/testing/natsServer.js';

/**
 * A TCP relay to a local server (nats-server) whose connections can be cut, as a process's
 * network is lost, and let through again: what a reconnect does, tested for real.
 */
export async function startRelay(targetPort: number) {
  const sockets = new Set<Socket>();
  let cut = false;
  const server: Server = createServer((client) => {
    if (cut) return client.destroy();
    const upstream = connect(targetPort, '127.0.0.1');
    for (const s of [client, upstream]) {
      sockets.add(s);
      s.on('error', () => undefined);
      s.on('close', () => {
        sockets.delete(s);
        client.destroy();
        upstream.destroy();
      });
    }
    client.pipe(upstream);
    upstream.pipe(client);
  });
  const port = await freePort();
  await new Promise<void>((resolve) => server.listen(port, '127.0.0.1', resolve));
  const destroyAll = () => sockets.forEach((s) => s.destroy());
  return {
    url: `nats://127.0.0.1:${port}`,
    /** Drops every connection and refuses new ones until `restore`. */
    cut: () => ((cut = true), destroyAll()),
    restore: () => void (cut = false),
    close: () => new Promise<void>((resolve) => (destroyAll(), server.close(() => resolve()))),
  };
}
