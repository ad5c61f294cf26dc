import type { FlowDefinition } from '../flowCatalog.js';
import { feedbackLoop } from './feedbackLoop.js';
import { incremental } from './incremental.js';
import { metacognitive } from './metacognitive.js';
import { microtask } from './microtask.js';
import { parallel } from './parallel.js';
import { progressive } from './progressive.js';
import { reentrant } from './reentrant.js';
import { toolBuilder } from './toolBuilder.js';

/**
 * The built-in patterns: flow definitions like a user's own (src/flowCatalog.ts), one file
 * each. A flow is built after those before it in this list, which it may invoke as children
 * (progressive invokes metacognitive; the tool builder five of them): a new pattern is its
 * file and its place here.
 */
export const builtinPatterns = [microtask, incremental, feedbackLoop, parallel, metacognitive, progressive, reentrant, toolBuilder] as const;

export type PatternName = (typeof builtinPatterns)[number]['name'];
export const patternNames: PatternName[] = builtinPatterns.map((p) => p.name);

type Inputs = { [P in (typeof builtinPatterns)[number] as P['name']]: P['input'] };
/** Each pattern's input schema by name, as checked at the edge (the bus, the CLI, the orchestrator). */
export const patternInputSchemas = Object.fromEntries(builtinPatterns.map((p) => [p.name, p.input])) as Inputs;

/** The patterns as the catalog takes them. */
export const builtinFlows = (): FlowDefinition[] => builtinPatterns.map((p) => p as unknown as FlowDefinition);
