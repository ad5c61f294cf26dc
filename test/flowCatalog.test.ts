import { assign, createActor, createMachine, setup, toPromise } from 'xstate';
import { describe, expect, it } from 'vitest';
import { z } from 'zod';
import { defineFlow, FlowCatalog, FlowDefinitionError, type FlowBlocks } from '../src/flowCatalog.js';
import { provideFlows } from '../src/flows.js';
import { builtinPatterns, patternNames } from '../src/patterns/index.js';
import { childPattern } from '../src/patterns/child.js';
import { scripted } from './support/flows.js';

/**
 * The catalog builds flows in order, each with the earlier ones as children: the built-in
 * patterns are definitions like a user's, so a user's flow invokes them, and a later user
 * flow invokes an earlier one, by its name in camelCase.
 */
const actors = (): Omit<FlowBlocks, 'patterns'> => {
  const none = createMachine({});
  return { microtask: scripted(['unused']).microtask, task: none, check: none, codeOnly: none, writeTool: none, waitTimer: none };
};

const echo = defineFlow({
  name: 'echo-twice',
  version: 1,
  input: z.object({ text: z.string() }),
  machine: () => setup({ types: { input: {} as { text: string } } }).createMachine({ initial: 'done', states: { done: { type: 'final' } }, output: ({ context }) => context, context: ({ input }) => ({ text: `${input.text}${input.text}` }) }),
});

describe('FlowCatalog', () => {
  it('holds every built-in pattern, each from its own file, and gives each flow the ones before it as children', () => {
    const seen: string[][] = [];
    const spy = defineFlow({ name: 'spy', version: 1, input: z.object({}), machine: (blocks) => (seen.push(Object.keys(blocks.patterns)), blocks.patterns.feedbackLoop!) });
    const { catalog } = provideFlows({ microtask: scripted(['unused']).microtask }, [spy]);
    expect(catalog.names()).toEqual([...patternNames, 'spy']);
    expect(patternNames).toEqual(builtinPatterns.map((p) => p.name));
    expect(seen[0]).toEqual(['microtask', 'incremental', 'feedbackLoop', 'parallel', 'metacognitive', 'progressive', 'reentrant', 'toolBuilder']);
    expect(catalog.machine('spy')).toBe(catalog.machine('feedback-loop'));
  });

  it("runs a later flow's child: an earlier user flow, by its name in camelCase", async () => {
    const parent = defineFlow({
      name: 'parent',
      version: 1,
      input: z.object({ text: z.string() }),
      machine: (blocks) =>
        setup({ actors: { child: childPattern(blocks, 'echoTwice', 'parent') }, types: { input: {} as { text: string }, context: {} as { text: string; child?: unknown } } }).createMachine({
          context: ({ input }) => input,
          initial: 'calling',
          states: {
            calling: { invoke: { src: 'child', input: ({ context }: { context: { text: string } }) => ({ text: context.text }), onDone: { target: 'done', actions: assign({ child: ({ event }) => event.output }) } } },
            done: { type: 'final' },
          },
          output: ({ context }) => context.child,
        }),
    });
    const catalog = new FlowCatalog([echo, parent], actors());
    const actor = createActor(catalog.machineOf('parent'), { input: { text: 'ab' } }).start();
    expect(await toPromise(actor)).toEqual({ text: 'abab' });
  });

  it('refuses a flow whose child is defined after it, naming both', () => {
    const early = defineFlow({ name: 'early', version: 1, input: z.object({}), machine: (blocks) => childPattern(blocks, 'late', 'early') });
    const late = defineFlow({ ...echo, name: 'late' });
    expect(() => new FlowCatalog([early, late], actors())).toThrow(/"early" invokes "late", which is not defined before it/);
    // The built-in that needs a child says so the same way (src/patterns/child.ts).
    const progressive = builtinPatterns.find((p) => p.name === 'progressive')!;
    const refused = (() => {
      try {
        new FlowCatalog([progressive], actors());
      } catch (e) {
        return e as FlowDefinitionError;
      }
    })();
    expect(refused).toBeInstanceOf(FlowDefinitionError);
    expect(refused?.code).toBe('INVALID_FLOW_DEFINITION');
    expect(refused?.message).toBe('flow "progressive" invokes "metacognitive", which is not defined before it');
  });

  it('names the known flows when asked for another', () => {
    const { catalog } = provideFlows({ microtask: scripted(['unused']).microtask }, []);
    expect(() => catalog.machineOf('nope')).toThrow(`no flow "nope" in this runtime; one of: ${patternNames.join(', ')}`);
  });
});
