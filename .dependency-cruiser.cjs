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
  {
    name: 'src-not-tests',
    comment:
      'Production code never imports the tests or their doubles (the in-process MemoryBus lives ' +
      'in test/support): what both need belongs in src/.',
    severity: 'error',
    from: { path: '^src/' },
    to: { path: '^test/' },
  },
  {
    name: 'stores-from-composition',
    comment:
      "Each mode's stores (lmdb or NATS: snapshots, results, journal, inbox) are built in the " +
      'composition root (src/composition.ts, with services.ts and runtime.ts of each mode), so ' +
      'embedded or NATS is decided in one place. Two readers may name one: the bus client ' +
      "(it lists the snapshots bucket as `microtask flows` does) and the daemon (an inbox when " +
      'none is given). Others get the store they need passed in, as its port (SnapshotStore, Journal, Inbox).',
    severity: 'error',
    from: {
      pathNot: [
        '^src/(composition|services|runtime|client)\\.ts$',
        '^src/daemon/Daemon\\.ts$',
        '^src/(persistence|journal|inbox)/',
        '^src/bus/KvResultsStore\\.ts$',
      ],
    },
    to: {
      path: [
        '^src/persistence/(Lmdb(Store|SnapshotStore|ResultsStore)|KvSnapshotStore)\\.ts$',
        '^src/journal/(Lmdb|Bus)Journal\\.ts$',
        '^src/inbox/(Lmdb|Bus)Inbox\\.ts$',
        '^src/bus/KvResultsStore\\.ts$',
      ],
    },
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
