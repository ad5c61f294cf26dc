// `npm run asyncapi`: writes docs/asyncapi.json from the protocol's zod schemas
// (src/daemon/asyncapi.ts). test/asyncapi.test.ts fails until it is run after a change.
import { readFile, writeFile } from 'node:fs/promises';
import { asyncApiDocument } from '../src/daemon/asyncapi.js';

const root = new URL('..', import.meta.url);
const { version } = JSON.parse(await readFile(new URL('package.json', root), 'utf8')) as { version: string };
const target = new URL('docs/asyncapi.json', root);
await writeFile(target, `${JSON.stringify(asyncApiDocument(version), null, 2)}\n`);
console.log(`wrote ${target.pathname}`);
