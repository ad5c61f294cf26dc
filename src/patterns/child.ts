import type { AnyStateMachine } from 'xstate';
import { FlowDefinitionError, type FlowBlocks } from '../flowCatalog.js';

/**
 * A pattern a flow invokes as a child, from the blocks; the catalog builds flows in order,
 * so a missing one is defined after the flow that needs it (or not at all): say so at start.
 */
export function childPattern(blocks: FlowBlocks, name: string, parent: string): AnyStateMachine {
  const machine = blocks.patterns[name];
  if (!machine) throw new FlowDefinitionError(`flow "${parent}" invokes "${name}", which is not defined before it`);
  return machine;
}
