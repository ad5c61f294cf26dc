/**
 * Part 2: the same flow in LangGraph.js. The feedback loop (generate → verify → revise,
 * three rounds, the same prompts and the same instant model) as a LangGraph graph with its
 * checkpointer (SqliteSaver: a WAL file, durable; MemorySaver for reference), against ours
 * in embedded and NATS mode, in one run. LangGraph is a dev dependency of this file only.
 *
 *   npx tsx bench/langgraph.ts [--quick] [--runs N]
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { Annotation, END, MemorySaver, START, StateGraph, type BaseCheckpointSaver } from '@langchain/langgraph';
import { SqliteSaver } from '@langchain/langgraph-checkpoint-sqlite';
import { answerSchemas, type Verdict } from '../src/contracts/answers.js';
import { reviewData, revisionPrompt } from '../src/machines/prompts.js';
import { benchModel, feedbackInput, fmt, met, note, pool, quick, ratio, runs, summarizeRuns, table, type PoolResult } from './lib.js';
import { bareSetup, embeddedSetup, natsSetup, type Setup } from './setups.js';
import { checkSteps, stepProblems, stepsVerdict, transitionsOf } from './steps.js';

const IN_FLIGHT = 16;

const FeedbackState = Annotation.Root({
  output: Annotation<string>(),
  score: Annotation<number>(),
  feedback: Annotation<string>(),
  iteration: Annotation<number>(),
  history: Annotation<Array<{ iteration: number; output: string; score: number; feedback: string }>>({
    reducer: (a, b) => a.concat(b),
    default: () => [],
  }),
});

/** The feedback loop as a LangGraph graph: the model calls are the same requests ours makes. */
function langGraphSetup(name: string, checkpointer: BaseCheckpointSaver): Setup {
  const model = benchModel();
  const { task, verify, threshold, maxIterations } = feedbackInput;
  const graph = new StateGraph(FeedbackState)
    .addNode('generate', async () => {
      const answer = await model.call({ system: task.system, prompt: task.prompt });
      return { output: String(answer.value), iteration: 1 };
    })
    .addNode('verify', async (state) => {
      const answer = await model.call<Verdict>({
        system: verify.system,
        prompt: verify.prompt,
        data: reviewData(task, state.output, []),
        schema: answerSchemas.verdict as never,
        schemaName: 'verdict',
      });
      const { score, feedback } = answer.value;
      return { score, feedback, history: [{ iteration: state.iteration, output: state.output, score, feedback }] };
    })
    .addNode('revise', async (state) => {
      const prompt = revisionPrompt(task, { output: state.output, feedback: state.feedback, score: state.score });
      const answer = await model.call({ system: task.system, prompt });
      return { output: String(answer.value), iteration: state.iteration + 1 };
    })
    .addEdge(START, 'generate')
    .addEdge('generate', 'verify')
    .addConditionalEdges('verify', (state) => (state.score >= threshold || state.iteration >= maxIterations ? END : 'revise'), ['revise', END])
    .addEdge('revise', 'verify')
    .compile({ checkpointer });
  let thread = 0;
  return {
    name,
    async run() {
      const final = await graph.invoke({}, { configurable: { thread_id: `t${++thread}` } });
      return final.score >= threshold && final.iteration === 3;
    },
    close: async () => undefined,
  };
}

export interface LangGraphRow {
  setup: string;
  durable: string;
  perSecond: number;
  p50: number;
  p99: number;
  failed: number;
  spread: string;
  /** Whether our flows stored every transition (bench/steps.ts); '' for the others. */
  steps: string;
}

/** Embedded ≥3x LangGraph.js + SqliteSaver, NATS ≥1.5x (issue 12); the row of the store before has none. */
function target(row: LangGraphRow, langGraph: number): string {
  if (row.setup === 'ours, embedded') return `≥3x: ${met(row.perSecond >= 3 * langGraph)}`;
  if (row.setup.startsWith('ours, NATS')) return `≥1.5x: ${met(row.perSecond >= 1.5 * langGraph)}`;
  return '';
}

export async function runLangGraph(): Promise<{ rows: LangGraphRow[]; markdown: string }> {
  const dir = await mkdtemp(join(tmpdir(), 'bench-langgraph-'));
  const sqlite = SqliteSaver.fromConnString(join(dir, 'checkpoints.sqlite'));
  const db = (sqlite as unknown as { db: { pragma(p: string, o?: { simple: boolean }): unknown } }).db;
  const langSqlite = langGraphSetup('LangGraph.js + SqliteSaver', sqlite);
  // Opened by the first use: read the settings it runs with for the table.
  await langSqlite.run('feedback-loop', {});
  const sqliteDurability = `WAL file, synchronous=${['OFF', 'NORMAL', 'FULL', 'EXTRA'][Number(db.pragma('synchronous', { simple: true }))] ?? '?'} (its default)`;
  // SQLite's NORMAL in WAL mode does not fsync each commit (a power cut may lose the last
  // ones); FULL does, as our file store does: the like-for-like durable comparison.
  const sqliteFull = SqliteSaver.fromConnString(join(dir, 'checkpoints-full.sqlite'));
  (sqliteFull as unknown as { db: { pragma(p: string): unknown } }).db.pragma('synchronous = FULL');
  const setups: Array<[Setup, string]> = [
    [bareSetup(), 'no (floor)'],
    [await embeddedSetup({ name: 'ours, embedded' }), 'lmdb, group commit, fsync’d'],
    [await embeddedSetup({ store: 'files', name: 'ours, embedded, before (file per save)' }), 'fsync’d file per save (last snapshot only)'],
    [await natsSetup({ name: 'ours, NATS (1 worker process)' }), 'JetStream KV + stream (server)'],
    [langSqlite, sqliteDurability],
    [langGraphSetup('LangGraph.js + SqliteSaver, synchronous=FULL', sqliteFull), 'WAL file, fsync per commit'],
    [langGraphSetup('LangGraph.js + MemorySaver', new MemorySaver()), 'no'],
  ];
  const total = quick ? 100 : 400;
  const results = new Map<Setup, PoolResult[]>();
  const expected = await transitionsOf('feedback-loop', feedbackInput);
  const steps = new Map<Setup, string>();
  try {
    for (const [setup] of setups) {
      note(`warming up ${setup.name}`);
      await pool(quick ? 30 : 60, IN_FLIGHT, () => setup.run('feedback-loop', feedbackInput));
    }
    for (let r = 0; r < runs; r++) {
      for (const [setup] of setups) {
        const result = await pool(total, IN_FLIGHT, () => setup.run('feedback-loop', feedbackInput));
        note(`run ${r + 1}/${runs} ${setup.name}: ${fmt(result.perSecond, 0)} flows/s`);
        results.set(setup, [...(results.get(setup) ?? []), result]);
        if (setup.storedSteps && !steps.has(setup)) steps.set(setup, stepsVerdict(checkSteps(await setup.storedSteps(), expected), expected));
      }
    }
  } finally {
    for (const [setup] of setups) await setup.close();
    await rm(dir, { recursive: true, force: true });
  }
  const rows = setups.map(([setup, durable]): LangGraphRow => {
    const s = summarizeRuns(results.get(setup)!);
    const stored = setup.storedSteps ? steps.get(setup)! : setup.name.startsWith('ours') ? 'not kept' : '';
    return { setup: setup.name, durable, perSecond: s.perSecond, p50: s.p50, p99: s.p99, failed: s.failed, spread: s.spread, steps: stored };
  });
  const lgSqlite = rows.find((r) => r.setup === 'LangGraph.js + SqliteSaver')!;
  const lgMemory = rows.find((r) => r.setup.includes('MemorySaver'))!;
  const markdown = table(
    ['setup', 'durable', 'flows/s', 'p50 ms', 'p99 ms', 'vs LangGraph + SqliteSaver', 'vs LangGraph + MemorySaver', 'runs (min–max /s)', 'every transition stored', 'target (vs LangGraph + SqliteSaver)'],
    rows.map((row) => [
      row.setup,
      row.durable,
      fmt(row.perSecond, 0),
      fmt(row.p50, 1),
      fmt(row.p99, 1),
      ratio(row.perSecond, lgSqlite.perSecond),
      ratio(row.perSecond, lgMemory.perSecond),
      `${runs}${row.spread ? ` (${row.spread})` : ''}${row.failed ? `, ${row.failed} FAILED` : ''}`,
      row.steps,
      target(row, lgSqlite.perSecond),
    ]),
  );
  return { rows, markdown };
}

if (import.meta.url === pathToFileURL(process.argv[1]!).href) {
  const { markdown } = await runLangGraph();
  console.log(
    `\n## 2. The feedback loop (3 rounds, 6 model calls), ours vs LangGraph.js, ${IN_FLIGHT} flows in flight (median of ${runs} runs)\n\n${markdown}`,
  );
  process.exit(stepProblems.length ? 1 : 0);
}
