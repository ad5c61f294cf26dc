/**
 * Re-records examples/offline/cassette.json from the hand-written answers in answers.ts,
 * by running the quickstart's examples through the same code as the CLI. Run it
 * (`npm run cassette:offline`) after changing a prompt or an example: the cassette is
 * keyed by what the model reads, so a changed prompt is a cassette miss.
 */
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { MicrotaskRunner } from '../../src/actors/microtask.js';
import { CassetteRecorder } from '../../src/actors/model/CassetteModel.js';
import { ScriptedModel } from '../../src/actors/model/ScriptedModel.js';
import { MemoryResultsStore } from '../../src/actors/ResultsStore.js';
import { MemoryBus } from '../../src/bus/MemoryBus.js';
import { KvSnapshotStore } from '../../src/persistence/KvSnapshotStore.js';
import { loadConfig } from '../../src/config.js';
import { silentLogger } from '../../src/log.js';
import { answerSchemas } from '../../src/contracts/answers.js';
import { patternInputSchemas } from '../../src/patterns/index.js';
import { runFlow } from '../../src/runFlow.js';
import { OFFLINE_CASSETTE, type Runtime } from '../../src/runtime.js';
import { handWrittenAnswer } from './answers.js';

await rm(OFFLINE_CASSETTE, { force: true });
const model = new CassetteRecorder(
  new ScriptedModel((request) => handWrittenAnswer(request), 'hand-written'),
  OFFLINE_CASSETTE,
  'hand-written: every answer on this cassette was written by a person, see examples/offline/answers.ts',
);
const results = new MemoryResultsStore();
const runtime: Runtime = {
  config: loadConfig({}),
  logger: silentLogger,
  // Nothing of a recording needs to outlive it.
  store: new KvSnapshotStore(await new MemoryBus().keyValue('snapshots')),
  model,
  modelDescription: 'recording hand-written answers',
  results,
  runner: new MicrotaskRunner({ model, results, answers: answerSchemas }),
};
const example = async (file: string) => JSON.parse(await readFile(new URL(`../${file}`, import.meta.url), 'utf8'));

for (const pattern of ['microtask', 'feedback-loop', 'parallel', 'incremental', 'metacognitive', 'progressive', 'reentrant'] as const) {
  const input = patternInputSchemas[pattern].parse(await example(`${pattern}.json`)) as Record<string, unknown>;
  const { output } = await runFlow(runtime, pattern, input);
  if (output.status !== 'done') throw new Error(`the ${pattern} example did not finish: ${output.reason}`);
}

const outRoot = await mkdtemp(join(tmpdir(), 'record-'));
const build = await runFlow(runtime, 'tool-builder', { spec: await example('api-tester.json') }, { outRoot });
await rm(outRoot, { recursive: true, force: true });
if (build.output.status !== 'done') throw new Error(`the tool build did not finish: ${build.output.reason}`);

await model.save();
console.error(`recorded ${model.name}: ${OFFLINE_CASSETTE}`);
