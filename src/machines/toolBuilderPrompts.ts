import type { ModuleSpec, ToolSpec } from '../contracts/toolSpec.js';
import type { TaskSpec } from './common.js';

/**
 * The microtasks of the tool builder. Each is one focused question; the spec and what
 * earlier steps found travel as data, not pasted into the instructions.
 */

export interface Analysis {
  problem: string;
  architecture: string;
  split: string;
}

const RUNTIME_RULES = [
  'The tool is a Node.js 20 command-line program in plain JavaScript ES modules with JSDoc types, starting with // @ts-check; the TypeScript compiler checks it.',
  'It has no dependencies: import only Node built-ins (node:fs, node:util, ...) and the modules of this tool (./<name>.js).',
  'It runs without any AI model at run time.',
].join('\n');

export function analysisTasks(spec: ToolSpec, timeoutMs?: number): TaskSpec[] {
  const data = { spec };
  const base = { ...(timeoutMs ? { timeoutMs } : {}), data };
  return [
    {
      taskType: 'analyze-problem',
      system: 'You analyze what a command-line tool must do. Be concrete and brief: at most 12 lines.',
      prompt: 'What problem does this tool solve, for whom, with what inputs and outputs, and which edge cases matter?',
      ...base,
    },
    {
      taskType: 'analyze-architecture',
      system: `You design the architecture of a small command-line tool. Be concrete and brief: at most 20 lines.\n${RUNTIME_RULES}`,
      prompt:
        'For each module of the spec, name the functions it exports with their JSDoc signatures, and say how the entry src/cli.js wires them.',
      ...base,
    },
    {
      taskType: 'analyze-split',
      system: 'You decide which parts of a tool are deterministic code and which would need judgement. Be brief: at most 10 lines.',
      prompt:
        'Which parts of this tool are plain deterministic code, and which would need an AI model? The tool must run without one: say how each part that would need judgement is done by code instead (rules, defaults, flags).',
      ...base,
    },
  ];
}

const moduleData = (spec: ToolSpec, module: ModuleSpec, analysis: Analysis) => ({
  tool: { name: spec.name, description: spec.description },
  module,
  otherModules: spec.modules.filter((m) => m.name !== module.name),
  analysis,
});

export function moduleTask(spec: ToolSpec, module: ModuleSpec, analysis: Analysis, timeoutMs?: number): TaskSpec {
  return {
    taskType: 'generate-module',
    system: `You write one module of a command-line tool: the complete file src/${module.name}.js.\n${RUNTIME_RULES}\nExport the module's functions by name. Document each export with JSDoc.`,
    prompt: `Write src/${module.name}.js: ${module.purpose}. Follow the architecture in the data.`,
    answer: 'code',
    maxTokens: 4096,
    ...(timeoutMs ? { timeoutMs } : {}),
    data: moduleData(spec, module, analysis),
  };
}

export function moduleVerifyTask(spec: ToolSpec, module: ModuleSpec, timeoutMs?: number): TaskSpec {
  return {
    taskType: 'verify-module',
    system:
      'You review one module of a command-line tool. Score from 0 to 1 how well the code does the module\'s purpose: correct, complete, handles bad input, clear exports. ' +
      'Automatic check diagnostics in the data are real errors: any of them caps the score at 0.5. Feedback: the concrete changes to make, most important first.',
    prompt: `Review src/${module.name}.js of the tool ${spec.name}: ${module.purpose}.`,
    ...(timeoutMs ? { timeoutMs } : {}),
    data: { tool: { name: spec.name, description: spec.description }, module },
  };
}

/** Level 2 of progressive improvement: the same module, asked of a specialist. */
export const moduleSpecialistSystem = (spec: ToolSpec, module: ModuleSpec): string =>
  `You are a senior Node.js engineer who writes small, dependable command-line tools. You write src/${module.name}.js of the tool "${spec.name}": ${module.purpose}.\n${RUNTIME_RULES}\n` +
  'Validate every input, fail with a clear message, prefer node:util parseArgs and fetch from the standard library. Export the functions by name with JSDoc types.';

export interface ModuleSummary {
  name: string;
  purpose: string;
  code: string;
}

export function entryTask(spec: ToolSpec, analysis: Analysis, modules: ModuleSummary[], timeoutMs?: number): TaskSpec {
  return {
    taskType: 'integrate-tool',
    system: `You write the entry point src/cli.js of a command-line tool and its README.md.\n${RUNTIME_RULES}\nThe entry imports every module (./<name>.js) and wires them; \`--help\` prints usage to stdout and exits 0. The README says what the tool does, how to install it (npm link) and how to use it, with examples.`,
    prompt: `Write src/cli.js and README.md for the tool ${spec.name}: ${spec.description}`,
    answer: 'toolEntry',
    maxTokens: 4096,
    ...(timeoutMs ? { timeoutMs } : {}),
    data: { tool: { name: spec.name, description: spec.description }, analysis, modules },
  };
}

export function toolReviewTask(spec: ToolSpec, timeoutMs?: number): TaskSpec {
  return {
    taskType: 'review-tool',
    system:
      'You review the entry point and README of a command-line tool. Approve only when the entry wires every module correctly, --help is useful, errors are clear, and the README matches what the entry does. ' +
      'Automatic check diagnostics in the data are real errors: never approve while there are any. Feedback: the concrete changes to make.',
    prompt: `Review src/cli.js and README.md of the tool ${spec.name}.`,
    ...(timeoutMs ? { timeoutMs } : {}),
    data: { tool: { name: spec.name, description: spec.description, modules: spec.modules } },
  };
}
