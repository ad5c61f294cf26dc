import { connect } from '@nats-io/transport-node';
import { Kvm } from '@nats-io/kv';
import { describe, expect, it } from 'vitest';
import { findNatsServer, NatsServerMissingError, startNatsServer } from '../src/testing/natsServer.js';

describe('the nats-server test helper', () => {
  it('starts a real nats-server with JetStream, stops it and starts it again with its store', async () => {
    await using server = await startNatsServer();
    let nc = await connect({ servers: server.url });
    const kv = await new Kvm(nc).create('helper-test');
    await kv.put('answer', '42');
    await nc.close();

    await server.stop();
    await expect(connect({ servers: server.url, reconnect: false, timeout: 500 })).rejects.toThrow();
    await server.start();

    nc = await connect({ servers: server.url });
    const again = await new Kvm(nc).open('helper-test');
    expect((await again.get('answer'))?.string()).toBe('42');
    await nc.close();
  });

  it('says how to install nats-server when it is missing', () => {
    expect(() => findNatsServer({ PATH: '/nonexistent' , NATS_SERVER_BIN: '/nonexistent/nats-server' })).toThrow(
      NatsServerMissingError,
    );
    expect(() => findNatsServer({ NATS_SERVER_BIN: '/nonexistent/nats-server' })).toThrow(/apt-get install nats-server/);
  });
});
