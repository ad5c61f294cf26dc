import type { Bus } from '../bus/Bus.js';
import type { Config } from '../config.js';
import type { Logger } from '../log.js';
import { serviceHealth, type Health } from '../ops/health.js';
import { Metrics } from '../ops/metrics.js';
import { OpsServerError, startOpsServer, type OpsServer } from '../ops/server.js';
import { UsageError } from './exitCodes.js';
import { isPortTaken } from './ports.js';

/**
 * `/healthz`, `/readyz` and `/metrics` of `microtask daemon` and `microtask worker`, on
 * --http-port or MICROTASK_HTTP_PORT (none when neither is set). The port is checked
 * before the service starts anything; the metrics are made then, for the service to fill.
 */
export class OpsEndpoint {
  private health: Health | undefined;
  private server: OpsServer | undefined;

  private constructor(
    private readonly config: Config,
    private readonly port: number,
    readonly metrics: Metrics,
  ) {}

  /** Undefined without a port; throws UsageError PORT_IN_USE (exit 2) when the port is taken. */
  static async prepare(config: Config, port: number | undefined, flag: string): Promise<OpsEndpoint | undefined> {
    if (port === undefined) return undefined;
    if (await isPortTaken(config.MICROTASK_HTTP_HOST, port)) throw portTaken(port, flag);
    return new OpsEndpoint(config, port, new Metrics());
  }

  /** Serves, once the service is up; resolves with the URL. */
  async serve(bus: Bus, logger: Logger, flag: string): Promise<string> {
    this.health = await serviceHealth(bus, this.config);
    try {
      this.server = await startOpsServer({ host: this.config.MICROTASK_HTTP_HOST, port: this.port, health: this.health, metrics: this.metrics, logger });
    } catch (e) {
      await this.health.close();
      throw e instanceof OpsServerError && e.code === 'OPS_PORT_IN_USE' ? portTaken(this.port, flag) : e;
    }
    return this.server.url;
  }

  /** Not ready from now on (the service is stopping); still answering, so a probe sees it. */
  drain(): void {
    this.health?.drain();
  }

  async close(): Promise<void> {
    await this.server?.close();
    await this.health?.close();
  }
}

const portTaken = (port: number, flag: string) =>
  new UsageError(`port ${port} is taken (another daemon or worker serves /metrics there?): choose another with ${flag} or MICROTASK_HTTP_PORT (0: any free port)`, 'PORT_IN_USE');
