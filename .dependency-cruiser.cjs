/**
 * The layers of src/, checked by `npm test` (`depcruise src --config .dependency-cruiser.cjs`).
 *
 * Type-only imports count as imports here (tsPreCompilationDeps): a machine that imports a
 * type from an actor's file ties the pure layer to that file's module graph, so the shared
 * shapes live in src/contracts/, which both sides may import and which imports only zod.
 *
 * test/fixtures/depcruise/ runs these same rules over a tiny tree of its own (one violation
 * of each kind) to prove the rules catch what they name; it reuses `forbidden` from here.
 */
const layerRules = [
  {
    name: 'machines-pure',
    comment:
      'A machine is a pure statechart (the workflow, in Temporal terms): it imports xstate, zod, ' +
      'other machines and the contracts in src/contracts, nothing with I/O. Move a shape both ' +
      'sides need into src/contracts.',
    severity: 'error',
    from: { path: '^src/machines/' },
    to: { pathNot: ['^src/machines/', '^src/contracts/', '(^|/)node_modules/(xstate|zod)/'] },
  },
  {
    name: 'contracts-pure',
    comment:
      'src/contracts holds the shapes machines and actors share (schemas, limits, types): it ' +
      'imports zod and other contracts only, so importing it never pulls in either side.',
    severity: 'error',
    from: { path: '^src/contracts/' },
    to: { pathNot: ['^src/contracts/', '(^|/)node_modules/zod/'] },
  },
  {
    name: 'actors-not-machines',
    comment:
      'Actors (the side effects) do not import machines, not even their types: the shapes they ' +
      'share belong in src/contracts.',
    severity: 'error',
    from: { path: '^src/actors/' },
    to: { path: '^src/machines/' },
  },
  // The NATS transport is NatsBus.ts and the parts it opens in src/bus/nats/; the in-process
  // one is MemoryBus.ts. One rule per direction, under one name.
  {
    name: 'transports-apart',
    comment:
      'One transport does not import another (NatsBus and src/bus/nats/, MemoryBus): what both ' +
      'use goes in a shared bus module (Bus.ts, subjects.ts, natsRules.ts).',
    severity: 'error',
    from: { path: '^src/bus/(NatsBus\\.ts$|nats/)' },
    to: { path: '^src/bus/MemoryBus\\.ts$' },
  },
  {
    name: 'transports-apart',
    comment:
      'One transport does not import another (MemoryBus, NatsBus and src/bus/nats/): what both ' +
      'use goes in a shared bus module (Bus.ts, subjects.ts, natsRules.ts).',
    severity: 'error',
    from: { path: '^src/bus/MemoryBus\\.ts$' },
    to: { path: '^src/bus/(NatsBus\\.ts$|nats/)' },
  },
  {
    name: 'flowHost-not-daemon',
    comment:
      'FlowHost runs flows for the daemon, the CLI and the library alike: it does not import ' +
      'src/daemon (the shapes it publishes are in src/contracts).',
    severity: 'error',
    from: { path: '^src/flowHost\\.ts$' },
    to: { path: '^src/daemon/' },
  },
  {
    name: 'services-not-cli',
    comment:
      'services.ts builds what the daemon and worker run; the CLI sits on top of it, not under ' +
      'it (shared errors live outside src/cli).',
    severity: 'error',
    from: { path: '^src/services\\.ts$' },
    to: { path: '^src/cli/' },
  },
  {
    name: 'no-circular',
    comment: 'Modules that import each other load in an order that depends on who came first.',
    severity: 'error',
    from: {},
    to: { circular: true },
  },
];

module.exports = {
  forbidden: layerRules,
  options: {
    doNotFollow: { path: 'node_modules' },
    tsPreCompilationDeps: true,
    tsConfig: { fileName: 'tsconfig.json' },
    enhancedResolveOptions: {
      exportsFields: ['exports'],
      conditionNames: ['import', 'require', 'node', 'default', 'types'],
      mainFields: ['module', 'main', 'types', 'typings'],
    },
  },
};
