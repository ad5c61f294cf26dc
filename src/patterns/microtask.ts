import { MicrotaskInputSchema } from '../contracts/microtask.js';
import { defineFlow } from '../flowCatalog.js';
import { microtaskMachine } from '../machines/microtaskMachine.js';
import { key } from './inputs.js';

/** One model call with a timeout, a fallback and a structured answer, as a flow of its own. */
export const microtask = defineFlow({
  name: 'microtask',
  version: 1,
  input: MicrotaskInputSchema.extend({ key }),
  machine: (blocks) => microtaskMachine.provide({ actors: { microtask: blocks.microtask } }),
});
