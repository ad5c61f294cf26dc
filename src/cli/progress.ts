import type { InspectionEvent } from 'xstate';

/**
 * Plain progress lines on stderr: each flow machine's state as it changes, children
 * indented under their parent and named by their path in the flow
 * ("  feedbackLoop module/auth: verifying"). What a script or a log file can read.
 */
export function progressPrinter(write: (line: string) => void = (line) => process.stderr.write(`${line}\n`)) {
  const last = new Map<string, string>();
  let rootKey: string | undefined;
  return (event: InspectionEvent) => {
    if (event.type !== '@xstate.snapshot') return;
    const snapshot = event.snapshot as {
      machine?: { id: string };
      value?: unknown;
      status?: string;
      context?: { input?: { key?: unknown } };
    };
    if (!snapshot.machine || snapshot.status !== 'active') return;
    const state = typeof snapshot.value === 'string' ? snapshot.value : JSON.stringify(snapshot.value);
    const id = event.actorRef.sessionId;
    if (last.get(id) === state) return;
    last.set(id, state);
    const { depth, root } = ancestry(event);
    const key = typeof snapshot.context?.input?.key === 'string' ? snapshot.context.input.key : undefined;
    // A child's first snapshot comes before its parent's: read the root's key from the root.
    rootKey ??= depth === 0 ? key : (root.getSnapshot?.()?.context?.input?.key as string | undefined);
    const path = key && rootKey && key.startsWith(`${rootKey}/`) ? ` ${key.slice(rootKey.length + 1)}` : '';
    write(`${'  '.repeat(depth)}${snapshot.machine.id}${path}: ${state}`);
  };
}

type Ref = { _parent?: Ref; getSnapshot?: () => { context?: { input?: { key?: unknown } } } | undefined };

function ancestry(event: InspectionEvent): { depth: number; root: Ref } {
  let depth = 0;
  let root = event.actorRef as Ref;
  while (root._parent) {
    depth++;
    root = root._parent;
  }
  return { depth, root };
}
