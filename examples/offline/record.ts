/**
 * Re-records examples/offline/cassette.json from the hand-written answers in answers.ts.
 * Run it (`npm run cassette:offline`) after changing a prompt or an example: the
 * cassette is keyed by what the model reads, so a changed prompt is a cassette miss.
 */
import { readFile, rm } from 'node:fs/promises';
import { MicrotaskRunner } from '../../src/actors/microtask.js';
import { CassetteRecorder } from '../../src/actors/model/CassetteModel.js';
import { ScriptedModel } from '../../src/actors/model/ScriptedModel.js';
import { MemoryResultsStore } from '../../src/actors/ResultsStore.js';
import { OFFLINE_CASSETTE } from '../../src/runtime.js';
import { handWrittenAnswer } from './answers.js';

await rm(OFFLINE_CASSETTE, { force: true });
const model = new CassetteRecorder(
  new ScriptedModel((request) => handWrittenAnswer(request), 'hand-written'),
  OFFLINE_CASSETTE,
  'hand-written: every answer on this cassette was written by a person, see examples/offline/answers.ts',
);
const runner = new MicrotaskRunner({ model, results: new MemoryResultsStore() });

const microtask = JSON.parse(await readFile(new URL('../microtask.json', import.meta.url), 'utf8'));
const result = await runner.run({ ...microtask, key: 'record/microtask' });
if (!result.success) throw new Error(`recording the microtask example failed: ${result.error?.message}`);

await model.save();
console.error(`recorded ${OFFLINE_CASSETTE}`);
