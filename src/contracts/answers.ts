import { z } from 'zod';
import { timeoutMsSchema } from './limits.js';

/**
 * The structured answers the patterns ask models for. Microtask inputs name them
 * (`answer: 'verdict'`); the runner validates the model's answer against them.
 */
export const VerdictSchema = z.object({
  score: z.number().min(0).max(1).describe('quality from 0 (useless) to 1 (nothing to improve)'),
  feedback: z.string().describe('what to change to score higher; empty when nothing'),
});
export type Verdict = z.infer<typeof VerdictSchema>;

export const ReviewSchema = z.object({
  approved: z.boolean().describe('true when the output can be used as it is'),
  feedback: z.string().describe('what the next pass must change; empty when approved'),
});
export type Review = z.infer<typeof ReviewSchema>;

export const AdjustmentsSchema = z.object({
  promptAdditions: z.array(z.string()).default([]).describe('instructions to add to the next attempt'),
  timeoutMs: timeoutMsSchema().optional().describe('a longer timeout for the next attempt'),
  model: z.string().optional().describe('another model for the next attempt'),
});
export type Adjustments = z.infer<typeof AdjustmentsSchema>;

export const FailureAnalysisSchema = z.object({
  rootCause: z.string().describe('why the attempt failed'),
  retry: z.boolean().describe('whether another attempt with adjustments can succeed'),
  adjustments: AdjustmentsSchema.describe('what to change in the next attempt'),
  reason: z.string().describe('why to retry, or why to stop'),
});
export type FailureAnalysis = z.infer<typeof FailureAnalysisSchema>;

export const CodeSchema = z.object({
  code: z.string().min(1).describe('the complete source file'),
});
export type Code = z.infer<typeof CodeSchema>;

export const ToolEntrySchema = z.object({
  entry: z.string().min(1).describe('the complete source of src/cli.js'),
  readme: z.string().min(1).describe('the complete README.md'),
});
export type ToolEntry = z.infer<typeof ToolEntrySchema>;

export const answerSchemas = {
  code: CodeSchema,
  toolEntry: ToolEntrySchema,
  verdict: VerdictSchema,
  review: ReviewSchema,
  failureAnalysis: FailureAnalysisSchema,
} as const satisfies Record<string, z.ZodType>;
export type AnswerName = keyof typeof answerSchemas;
