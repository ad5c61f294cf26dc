import { describe, expect, it } from 'vitest';
import { ConfigError, loadConfig } from '../src/config.js';

describe('configuration from the environment', () => {
  it('has a default for everything: embedded bus, offline model', () => {
    const config = loadConfig({});
    expect(config.NATS_URL).toBeUndefined();
    expect(config.ANTHROPIC_API_KEY).toBeUndefined();
    expect(config.MICROTASK_STATE_DIR).toBe('.microtask');
    expect(config.MICROTASK_TIMEOUT_MS).toBe(30_000);
  });

  it('reads several NATS servers and numbers, and treats an empty value as unset', () => {
    const config = loadConfig({ NATS_URL: 'nats://a:4222, b:4223', MICROTASK_TIMEOUT_MS: '5000', ANTHROPIC_API_KEY: '' });
    expect(config.NATS_URL).toEqual(['nats://a:4222', 'b:4223']);
    expect(config.MICROTASK_TIMEOUT_MS).toBe(5000);
    expect(config.ANTHROPIC_API_KEY).toBeUndefined();
  });

  it('names each wrong variable and what it accepts', () => {
    const error = (() => {
      try {
        loadConfig({ MICROTASK_TIMEOUT_MS: 'soon', MICROTASK_LOG_LEVEL: 'loud', ANTHROPIC_BASE_URL: 'not a url' });
      } catch (e) {
        return e;
      }
    })() as ConfigError;
    expect(error).toBeInstanceOf(ConfigError);
    expect(error.code).toBe('CONFIG_INVALID');
    expect(error.message).toContain('MICROTASK_TIMEOUT_MS="soon": expected a whole number of milliseconds between 1 and 600000');
    expect(error.message).toContain('MICROTASK_LOG_LEVEL="loud": expected one of fatal, error, warn, info, debug, trace, silent');
    expect(error.problems.map((p) => p.variable).sort()).toEqual(['ANTHROPIC_BASE_URL', 'MICROTASK_LOG_LEVEL', 'MICROTASK_TIMEOUT_MS']);
  });

  it('never quotes a password back: credentials in NATS_URL are refused, and shown hidden', () => {
    let error: ConfigError | undefined;
    try {
      loadConfig({ NATS_URL: 'nats://bob:hunter2secret@127.0.0.1:4222,nats://10.0.0.2:4222' });
    } catch (e) {
      error = e as ConfigError;
    }
    expect(error).toBeInstanceOf(ConfigError);
    expect(error!.message).not.toContain('hunter2secret');
    expect(error!.message).not.toContain('bob');
    expect(error!.message).toContain('NATS_URL="nats://(hidden)@127.0.0.1:4222,nats://10.0.0.2:4222"');
    expect(error!.message).toContain('set NATS_USER and NATS_PASSWORD');
  });
});

