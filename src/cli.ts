#!/usr/bin/env node
// Node 20 opens its debugger on SIGUSR1 (--disable-sigusr1 came in 22.14), so whoever may
// signal this process could run code in it and read its keys. A handler replaces that
// default; it is installed before anything else is loaded.
process.on('SIGUSR1', () => process.emitWarning('SIGUSR1 ignored: this process does not open its debugger on a signal'));
const { main } = await import('./cli/main.js');

process.exitCode = await main(process.argv.slice(2));
