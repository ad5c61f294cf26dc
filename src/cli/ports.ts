import { createServer } from 'node:net';

/**
 * Whether something listens on host:port already. A service checks its ports before it
 * starts anything (resumes flows, connects, spawns), so a taken one is refused in one line
 * instead of after a start-up it must undo. Only "in use" counts: any other refusal (a host
 * not on this machine, a privileged port) is left for the real listen to report.
 */
export function isPortTaken(host: string, port: number): Promise<boolean> {
  if (port === 0) return Promise.resolve(false);
  return new Promise((resolve) => {
    const probe = createServer();
    probe.once('error', (e: NodeJS.ErrnoException) => resolve(e.code === 'EADDRINUSE'));
    probe.listen({ host, port, exclusive: true }, () => probe.close(() => resolve(false)));
  });
}
