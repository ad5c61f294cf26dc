import { describe, expect, it } from 'vitest';
import { BusError } from '../../src/bus/Bus.js';
import { connectNatsBus } from '../../src/bus/NatsBus.js';
import { loadConfig } from '../../src/config.js';
import { silentLogger } from '../../src/log.js';
import { connectBus } from '../../src/composition.js';
import { startNatsServer } from '../../src/testing/natsServer.js';

describe('NATS authentication, from the environment', () => {
  it('connects with NATS_TOKEN, and says why without it', async () => {
    await using server = await startNatsServer({ args: ['--auth', 's3cret-token'] });
    const bus = await connectBus(loadConfig({ NATS_URL: server.url, NATS_TOKEN: 's3cret-token' }), silentLogger, 'test');
    const kv = await bus.keyValue('auth');
    await kv.put('k', 'v');
    expect((await kv.get('k'))?.string()).toBe('v');
    await bus.close();

    const refused = await connectNatsBus({ servers: [server.url], waitOnFirstConnect: false, maxReconnectAttempts: 0 }).catch((e: unknown) => e);
    expect(refused).toBeInstanceOf(BusError);
    expect((refused as BusError).message).toMatch(/auth/i);
  });

  it('connects with NATS_USER and NATS_PASSWORD', async () => {
    await using server = await startNatsServer({ args: ['--user', 'daemon', '--pass', 'pw-123'] });
    const bus = await connectBus(loadConfig({ NATS_URL: server.url, NATS_USER: 'daemon', NATS_PASSWORD: 'pw-123' }), silentLogger, 'test');
    await bus.publish('x.y', 'z');
    await bus.close();
  });
});
