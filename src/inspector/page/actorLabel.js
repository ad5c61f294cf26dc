// The names a person knows for a flow's actors, in one place: the inspector page loads this
// file as it is (plain ES module, no build step) and the CLI's progress imports it
// (actorLabel.d.ts gives TypeScript its types).
//
// The journal names an actor by its path of child ids from the root (`module:auth/0.feedbackLoop.generating`).
// Ids a machine gives its children (the tool builder: `analysis`, `module:auth`,
// `module:auth:improve`, `integration`, `recovery`; the parallel pattern: `task-3`) read as
// they are meant; an id XState made up for an invoke (`<index>.<machine>.<state path>`)
// reads as the state that invoked it.

/**
 * One child id as a person reads it: `module:auth` → `module auth`,
 * `module:auth:improve` → `module auth (improving)`, `task-3` → `task 3`,
 * `0.feedbackLoop.generating` → `generating`; any other id as it is.
 * @param {string} id
 * @returns {string}
 */
export function childLabel(id) {
  const module = /^module:([^:/]+)(:improve)?$/.exec(id);
  if (module) return `module ${module[1]}${module[2] ? ' (improving)' : ''}`;
  const task = /^task-(\d+)$/.exec(id);
  if (task) return `task ${task[1]}`;
  const invoked = /^\d+\.[^.]+\.(.+)$/.exec(id);
  if (invoked) return invoked[1].split('.').at(-1);
  return id;
}

/**
 * An actor of a flow as a person reads it, from its journal path: the root is its machine
 * (`toolBuilder`); a child is each id on its path read by `childLabel`, joined by ` › `
 * (`module auth`, `module auth › generating`).
 * @param {string} path `root`, or child ids from the root joined by `/`
 * @param {string} [machine] the root's machine id
 * @returns {string}
 */
export function actorLabel(path, machine) {
  if (path === 'root' || path === '') return machine ?? 'flow';
  return path.split('/').map(childLabel).join(' › ');
}

/**
 * An event as a person reads it: a child's done or error event names the child
 * (`xstate.done.actor.module:auth` → `done: module auth`); other events as they are.
 * @param {string | undefined} event
 * @returns {string}
 */
export function eventLabel(event) {
  if (!event) return '';
  const actor = /^xstate\.(done|error)\.actor\.(.+)$/.exec(event);
  return actor ? `${actor[1]}: ${childLabel(actor[2])}` : event;
}
