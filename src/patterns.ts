import { z } from 'zod';
import { MicrotaskInputSchema } from './contracts/microtask.js';
import { BudgetSchema, TaskSpecSchema } from './machines/common.js';
import { timeoutMsSchema } from './contracts/limits.js';
import { ToolSpecSchema } from './contracts/toolSpec.js';
import { PersonOptionSchema } from './machines/waits.js';

/**
 * The patterns a user can start by name (`microtask run <pattern>`, the bus subject
 * `microtask.flow.start.<pattern>`), each with the zod schema its input is checked
 * against at the edge. `key` is optional there: the flow's id is used when it is absent.
 */
const key = z.string().min(1).max(500).optional();
const threshold = z.number().min(0).max(1);
const count = (max: number) => z.number().int().min(1).max(max);

export const patternInputSchemas = {
  microtask: MicrotaskInputSchema.extend({ key }),
  incremental: z.object({
    key,
    items: z.array(z.unknown()).max(100_000),
    task: TaskSpecSchema,
    previous: z.object({ results: z.array(z.any()) }).optional(),
    budget: BudgetSchema.optional(),
  }),
  'feedback-loop': z
    .object({
      key,
      task: TaskSpecSchema,
      verify: TaskSpecSchema.optional(),
      personVerify: PersonOptionSchema.optional(),
      threshold,
      maxIterations: count(20),
      budget: BudgetSchema.optional(),
    })
    .refine((i) => (i.verify === undefined) !== (i.personVerify === undefined), {
      error: 'give `verify` (the model scores each attempt) or `personVerify` (a person does), one of the two',
      path: ['verify'],
    }),
  parallel: z.object({
    key,
    tasks: z.array(TaskSpecSchema).min(1).max(10_000),
    concurrency: count(256),
    budget: BudgetSchema.optional(),
  }),
  metacognitive: z.object({
    key,
    task: TaskSpecSchema,
    analyze: z.object({ system: z.string().optional(), prompt: z.string().optional(), timeoutMs: timeoutMsSchema().optional() }).optional(),
    maxAttempts: count(10),
    onAnalysisFailure: z.enum(['retry', 'fail']).optional(),
    budget: BudgetSchema.optional(),
  }),
  progressive: z.object({
    key,
    task: TaskSpecSchema,
    verify: TaskSpecSchema,
    threshold,
    specialist: z.object({ system: z.string().min(1) }),
    maxAttempts: count(10).optional(),
    startLevel: z.union([z.literal(0), z.literal(1), z.literal(2), z.literal(3)]).optional(),
    budget: BudgetSchema.optional(),
  }),
  reentrant: z
    .object({
      key,
      task: TaskSpecSchema,
      review: TaskSpecSchema.optional(),
      personReview: PersonOptionSchema.optional(),
      input: z.unknown(),
      maxRevisions: z.number().int().min(0).max(20),
      budget: BudgetSchema.optional(),
    })
    .refine((i) => (i.review === undefined) !== (i.personReview === undefined), {
      error: 'give `review` (the model reviews each pass) or `personReview` (a person does), one of the two',
      path: ['review'],
    }),
  // The output root is the runner's to choose (MICROTASK_STATE_DIR or --out), never a client's.
  'tool-builder': z.object({
    key,
    spec: ToolSpecSchema,
    threshold: threshold.optional(),
    maxIterations: count(20).optional(),
    maxRevisions: z.number().int().min(0).max(20).optional(),
    maxAttempts: count(10).optional(),
    timeoutMs: timeoutMsSchema().optional(),
    budget: BudgetSchema.optional(),
    approval: PersonOptionSchema.optional(),
  }),
} as const;

export type PatternName = keyof typeof patternInputSchemas;
export const patternNames = Object.keys(patternInputSchemas) as PatternName[];

export const isPatternName = (name: string): name is PatternName => Object.hasOwn(patternInputSchemas, name);

/**
 * The version of each pattern's machine, saved with every snapshot. Bump it when a change
 * to a machine (its states, context or input) makes older snapshots unsafe to resume:
 * those flows are then marked failed with INCOMPATIBLE_SNAPSHOT instead of resumed wrongly.
 */
export const machineVersions: Record<PatternName, number> = {
  microtask: 1,
  incremental: 1,
  'feedback-loop': 1,
  parallel: 1,
  metacognitive: 1,
  progressive: 1,
  reentrant: 1,
  'tool-builder': 2,
};
