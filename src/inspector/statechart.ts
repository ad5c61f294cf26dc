import elkModule from 'elkjs/lib/elk.bundled.js';
import type { ELK, ElkExtendedEdge, ElkNode } from 'elkjs/lib/elk-api.js';
import type { AnyActorLogic, AnyStateMachine } from 'xstate';
import { getStateNodes } from 'xstate/graph';
import type { Flows } from '../flows.js';

/**
 * A machine's definition as a drawing: its states (nested), the transitions between them
 * with their event labels, and the actors each state invokes, laid out by ELK (layered,
 * left to right). Built once per machine from the definition (`xstate/graph`), never from a
 * running actor, so the same model draws every flow of that machine, finished or not; the
 * page highlights the states of a snapshot on it.
 *
 * Coordinates are absolute (from the top left of the drawing), so the page draws without
 * adding up offsets.
 */
export interface StatechartModel {
  machineId: string;
  root: StatechartNode;
  edges: StatechartEdge[];
  /**
   * What each `src` the machine invokes is: a child machine (drawn by its own model, under
   * its id) or other logic (a microtask, a check: a promise actor).
   */
  actors: Record<string, { kind: 'machine'; machineId: string } | { kind: 'logic' }>;
  width: number;
  height: number;
}

export type StateNodeType = 'atomic' | 'compound' | 'parallel' | 'final' | 'history';

export interface StatechartNode {
  /** The state node's id (`feedbackLoop.generating`). */
  id: string;
  key: string;
  /** From the machine's root: `['generating']`; [] for the root. Matches a snapshot's value. */
  path: string[];
  type: StateNodeType;
  /** The key of the initial child state of a compound state. */
  initial?: string;
  /**
   * What the state invokes while it is active, and the children its entry spawns
   * (`spawned`: their id is chosen when it runs, `*` here: one module's loop, `module:auth`).
   */
  invokes: Array<{ id: string; src: string; spawned?: true }>;
  /** Named entry actions (`setStatus`), for the tooltip. */
  entry: string[];
  description?: string;
  children: StatechartNode[];
  x: number;
  y: number;
  width: number;
  height: number;
}

export type TransitionKind = 'event' | 'always' | 'after' | 'done' | 'error';

export interface StatechartEdge {
  id: string;
  /** State node ids. */
  source: string;
  target: string;
  /** The event type as XState names it (`xstate.done.actor.0.feedbackLoop.generating`; `` for `always`). */
  event: string;
  kind: TransitionKind;
  /** What a person reads: `done: microtask [generated]`, `always [passed]`, `after 500ms`. */
  label: string;
  guard?: string;
  /** The route, start to end; straight from source to target when ELK gave none. */
  points: Array<{ x: number; y: number }>;
  labelBox: { x: number; y: number; width: number; height: number };
}

type AnyStateNode = AnyStateMachine['root'];
interface TransitionLike {
  target?: readonly AnyStateNode[];
  guard?: unknown;
  eventType: string;
}

const CHAR = 6.6; // average width of a 11px sans-serif character
const LINE = 15;

/** Every machine the flows can run, by id: the patterns' machines and every child machine they invoke. */
export function machinesOf(flows: Flows): Map<string, AnyStateMachine> {
  const machines = new Map<string, AnyStateMachine>();
  const visit = (machine: AnyStateMachine) => {
    if (machines.has(machine.id)) return;
    machines.set(machine.id, machine);
    for (const logic of Object.values(machine.implementations.actors ?? {})) {
      if (isMachine(logic)) visit(logic);
    }
  };
  for (const name of flows.catalog.names()) visit(flows.catalog.machine(name)!);
  return machines;
}

export function isMachine(logic: unknown): logic is AnyStateMachine {
  return typeof logic === 'object' && logic !== null && 'root' in logic && 'implementations' in logic && typeof (logic as { id?: unknown }).id === 'string';
}

/** The machine's states and transitions, not yet laid out (every position 0). */
export function describeMachine(machine: AnyStateMachine): StatechartModel {
  const toNode = (stateNode: AnyStateNode): StatechartNode => {
    const children = Object.values(stateNode.states ?? {}) as AnyStateNode[];
    const initialTarget = (stateNode.initial as { target?: readonly AnyStateNode[] } | undefined)?.target?.[0];
    return {
      id: stateNode.id,
      key: stateNode.key,
      path: [...stateNode.path],
      type: stateNode.type as StateNodeType,
      ...(initialTarget ? { initial: initialTarget.key } : {}),
      invokes: [
        ...stateNode.invoke.map((invoke) => ({ id: invoke.id, src: typeof invoke.src === 'string' ? invoke.src : 'inline' })),
        ...spawnedOnEntry(stateNode),
      ],
      entry: (stateNode.entry as unknown[]).map(actionName).filter((name): name is string => name !== undefined),
      ...(stateNode.description ? { description: stateNode.description } : {}),
      children: children.map(toNode),
      x: 0,
      y: 0,
      width: 0,
      height: 0,
    };
  };

  // Invoke ids name the done and error events; the page shows what was invoked instead.
  const srcOfInvoke = new Map<string, string>();
  for (const stateNode of getStateNodes(machine.root)) {
    for (const invoke of stateNode.invoke) srcOfInvoke.set(invoke.id, typeof invoke.src === 'string' ? invoke.src : 'inline');
  }

  // A spawned child's id is chosen when it runs: its state's `xstate.done.actor.*` names what it spawned.
  const spawnedSrc = (source: AnyStateNode): string | undefined => {
    const srcs = [...new Set(spawnedOnEntry(source).map((spawned) => spawned.src))];
    return srcs.length === 1 ? srcs[0] : undefined;
  };
  const spawnedSrcOf = (source: AnyStateNode, event: string) => {
    if (!/^xstate\.(done|error)\.actor\.\*$/.test(event)) return srcOfInvoke;
    const src = spawnedSrc(source);
    return src ? new Map([...srcOfInvoke, ['*', src]]) : srcOfInvoke;
  };

  const edges: StatechartEdge[] = [];
  const add = (source: AnyStateNode, transition: TransitionLike, kind: TransitionKind, event: string) => {
    const guard = guardName(transition.guard);
    const targets = transition.target && transition.target.length > 0 ? transition.target : undefined;
    // A transition without a target only runs actions: it does not move, so it is not drawn.
    if (!targets) return;
    for (const target of targets) {
      edges.push({
        id: `e${edges.length}`,
        source: source.id,
        target: target.id,
        event,
        kind,
        label: `${eventLabel(kind, event, spawnedSrcOf(source, event))}${guard ? ` [${guard}]` : ''}`,
        ...(guard ? { guard } : {}),
        points: [],
        labelBox: { x: 0, y: 0, width: 0, height: 0 },
      });
    }
  };
  for (const stateNode of getStateNodes(machine.root)) {
    for (const [event, transitions] of stateNode.transitions) {
      for (const transition of transitions) add(stateNode, transition as TransitionLike, kindOf(event), event);
    }
    for (const transition of stateNode.always ?? []) add(stateNode, transition as TransitionLike, 'always', '');
  }

  const actors: StatechartModel['actors'] = {};
  for (const [src, logic] of Object.entries(machine.implementations.actors ?? {})) {
    actors[src] = isMachine(logic) ? { kind: 'machine', machineId: logic.id } : { kind: 'logic' };
  }
  // Invoked by a name the machine registered but was not given an implementation of.
  for (const src of srcOfInvoke.values()) actors[src] ??= { kind: 'logic' };
  for (const stateNode of getStateNodes(machine.root)) for (const { src } of spawnedOnEntry(stateNode)) actors[src] ??= { kind: 'logic' };

  return { machineId: machine.id, root: toNode(machine.root), edges, actors, width: 0, height: 0 };
}

/**
 * The children a state's entry actions spawn (`spawnChild('feedbackLoop', { id: ... })`,
 * named in `setup({ actions })` or inline): what they run, by the registered name.
 */
function spawnedOnEntry(stateNode: AnyStateNode): Array<{ id: string; src: string; spawned: true }> {
  const named = (stateNode.machine.implementations.actions ?? {}) as Record<string, unknown>;
  const spawned: Array<{ id: string; src: string; spawned: true }> = [];
  for (const action of stateNode.entry as unknown[]) {
    const type = typeof action === 'string' ? action : (action as { type?: unknown } | null)?.type;
    const implementation = typeof action === 'function' ? action : typeof type === 'string' ? named[type] : undefined;
    const spawn = implementation as { type?: unknown; src?: unknown; id?: unknown } | undefined;
    if (spawn?.type !== 'xstate.spawnChild') continue;
    spawned.push({ id: typeof spawn.id === 'string' ? spawn.id : '*', src: typeof spawn.src === 'string' ? spawn.src : 'inline', spawned: true });
  }
  return spawned;
}

function kindOf(event: string): TransitionKind {
  if (event.startsWith('xstate.done.actor.') || event.startsWith('xstate.done.state.')) return 'done';
  if (event.startsWith('xstate.error.actor.')) return 'error';
  if (event.startsWith('xstate.after.')) return 'after';
  return 'event';
}

function eventLabel(kind: TransitionKind, event: string, srcOfInvoke: Map<string, string>): string {
  switch (kind) {
    case 'always':
      return 'always';
    case 'after': {
      const delay = /^xstate\.after\.([^.]+)\./.exec(event)?.[1];
      return `after ${delay && /^\d+$/.test(delay) ? `${delay}ms` : delay ?? '?'}`;
    }
    case 'done':
    case 'error': {
      if (event.startsWith('xstate.done.state.')) return 'done';
      const invokeId = event.slice(kind === 'done' ? 'xstate.done.actor.'.length : 'xstate.error.actor.'.length);
      return `${kind}: ${srcOfInvoke.get(invokeId) ?? invokeId}`;
    }
    default:
      return event;
  }
}

function guardName(guard: unknown): string | undefined {
  if (guard === undefined || guard === null) return undefined;
  if (typeof guard === 'string') return guard;
  if (typeof guard === 'function') return guard.name && guard.name !== 'guard' ? guard.name : 'guard';
  const type = (guard as { type?: unknown }).type;
  return typeof type === 'string' ? type : 'guard';
}

function actionName(action: unknown): string | undefined {
  if (typeof action === 'string') return action;
  const type = (action as { type?: unknown } | null)?.type;
  return typeof type === 'string' && !type.startsWith('xstate.') ? type : undefined;
}

// ---------------------------------------------------------------------------------
// Layout

// elkjs is CommonJS: its module object is the constructor, and its `default` too.
const Elk = ((elkModule as { default?: unknown }).default ?? elkModule) as new () => ELK;
const elk = new Elk();

/** Lays the model out with ELK; returns a copy with positions and routes. */
export async function layoutStatechart(model: StatechartModel): Promise<StatechartModel> {
  const toElk = (node: StatechartNode, isRoot: boolean): ElkNode => {
    const title = node.key || model.machineId;
    const invokeLines = node.invokes.map((invoke) => `${invoke.spawned ? 'spawn' : 'invoke'} ${invoke.src}`);
    const textWidth = Math.max(title.length * (CHAR + 1), ...invokeLines.map((line) => line.length * CHAR));
    const header = LINE + 10 + invokeLines.length * LINE;
    if (node.children.length === 0) {
      return { id: node.id, width: Math.ceil(textWidth + 28), height: Math.max(36, header + 10) };
    }
    return {
      id: node.id,
      layoutOptions: {
        'elk.padding': `[top=${isRoot ? 12 : header + 8},left=16,bottom=16,right=16]`,
        ...(isRoot ? {} : { 'elk.nodeSize.constraints': 'MINIMUM_SIZE', 'elk.nodeSize.minimum': `(${Math.ceil(textWidth + 32)},${header + 20})` }),
      },
      children: node.children.map((child) => toElk(child, false)),
    };
  };
  const edges: ElkExtendedEdge[] = model.edges.map((edge) => ({
    id: edge.id,
    sources: [edge.source],
    targets: [edge.target],
    labels: [{ id: `${edge.id}-label`, text: edge.label, width: Math.ceil(edge.label.length * CHAR + 8), height: LINE }],
  }));
  const graph: ElkNode = {
    ...toElk(model.root, true),
    layoutOptions: {
      ...toElk(model.root, true).layoutOptions,
      'elk.algorithm': 'layered',
      'elk.direction': 'DOWN',
      'elk.hierarchyHandling': 'INCLUDE_CHILDREN',
      'elk.edgeRouting': 'ORTHOGONAL',
      'elk.layered.spacing.nodeNodeBetweenLayers': '50',
      'elk.spacing.nodeNode': '28',
      'elk.spacing.edgeLabel': '4',
      'elk.json.edgeCoords': 'ROOT',
      'elk.json.shapeCoords': 'ROOT',
    },
    edges,
  };
  const laid = await elk.layout(graph);

  const boxes = new Map<string, { x: number; y: number; width: number; height: number }>();
  const collect = (node: ElkNode) => {
    boxes.set(node.id, { x: node.x ?? 0, y: node.y ?? 0, width: node.width ?? 0, height: node.height ?? 0 });
    for (const child of node.children ?? []) collect(child);
  };
  collect(laid);
  const laidEdges = new Map<string, ElkExtendedEdge>();
  const collectEdges = (node: ElkNode) => {
    for (const edge of node.edges ?? []) laidEdges.set(edge.id, edge);
    for (const child of node.children ?? []) collectEdges(child);
  };
  collectEdges(laid);

  const place = (node: StatechartNode): StatechartNode => ({
    ...node,
    ...(boxes.get(node.id) ?? { x: 0, y: 0, width: 0, height: 0 }),
    children: node.children.map(place),
  });
  const center = (id: string) => {
    const box = boxes.get(id) ?? { x: 0, y: 0, width: 0, height: 0 };
    return { x: box.x + box.width / 2, y: box.y + box.height / 2 };
  };
  const placedEdges = model.edges.map((edge): StatechartEdge => {
    const laidEdge = laidEdges.get(edge.id);
    const section = laidEdge?.sections?.[0];
    const points = section
      ? [section.startPoint, ...(section.bendPoints ?? []), section.endPoint].map(({ x, y }) => ({ x, y }))
      : [center(edge.source), center(edge.target)];
    const label = laidEdge?.labels?.[0];
    const middle = points[Math.floor(points.length / 2)]!;
    const labelBox = label
      ? { x: label.x ?? 0, y: label.y ?? 0, width: label.width ?? 0, height: label.height ?? 0 }
      : { x: middle.x, y: middle.y - LINE, width: edge.label.length * CHAR, height: LINE };
    return { ...edge, points, labelBox };
  });
  return {
    ...model,
    root: place(model.root),
    edges: placedEdges,
    width: Math.ceil(laid.width ?? 0),
    height: Math.ceil(laid.height ?? 0),
  };
}

/**
 * The laid-out statecharts of the flows' machines, each computed once on first request
 * (a layout takes tens of milliseconds; machines do not change while the process runs).
 */
export class StatechartCatalog {
  private readonly machines: Map<string, AnyStateMachine>;
  private readonly layouts = new Map<string, Promise<StatechartModel>>();

  constructor(flows: Flows) {
    this.machines = machinesOf(flows);
  }

  ids(): string[] {
    return [...this.machines.keys()];
  }

  /** The laid-out model of a machine, or undefined for an unknown id. */
  get(machineId: string): Promise<StatechartModel> | undefined {
    const machine = this.machines.get(machineId);
    if (!machine) return undefined;
    let layout = this.layouts.get(machineId);
    if (!layout) {
      layout = layoutStatechart(describeMachine(machine));
      // A failed layout is tried again next time rather than cached.
      layout.catch(() => this.layouts.delete(machineId));
      this.layouts.set(machineId, layout);
    }
    return layout;
  }

  machine(machineId: string): AnyActorLogic | undefined {
    return this.machines.get(machineId);
  }
}
