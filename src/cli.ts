#!/usr/bin/env node
// Node 20 opens its debugger on SIGUSR1 (--disable-sigusr1 came in 22.14), so whoever may
// signal this process could run code in it and read its keys. A handler replaces that
// default; it is installed before anything else is loaded.
process.on('SIGUSR1', () => process.emitWarning('SIGUSR1 ignored: this process does not open its debugger on a signal'));
// `microtask flows | head`: a reader that closes the pipe early is no error of ours (no stack trace, exit 0).
process.stdout.on('error', (e: NodeJS.ErrnoException) => {
  if (e.code === 'EPIPE') process.exit(0);
  throw e;
});
// Traces when an OTEL_* variable asks for them (OTEL_TRACES_EXPORTER, OTEL_EXPORTER_OTLP_ENDPOINT):
// installed before the rest loads; nothing of the SDK is loaded otherwise.
const { startTracing } = await import('./ops/tracing.js');
const command = process.argv.slice(2).find((a) => !a.startsWith('-'));
const tracing = await startTracing({ serviceName: command === 'daemon' || command === 'worker' ? `microtask-${command}` : 'microtask' });
const { main } = await import('./cli/main.js');

process.exitCode = await main(process.argv.slice(2));
// What is still buffered is exported before the process ends.
await tracing?.shutdown();
