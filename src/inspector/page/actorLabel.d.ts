// Types of actorLabel.js (plain JavaScript: the inspector page loads it with no build step).

/** One child id as a person reads it: `module:auth` → `module auth`, `0.feedbackLoop.generating` → `generating`. */
export function childLabel(id: string): string;
/** An actor of a flow from its journal path (`root`, `module:auth/0.feedbackLoop.generating`): `toolBuilder`, `module auth › generating`. */
export function actorLabel(path: string, machine?: string): string;
/** `xstate.done.actor.module:auth` → `done: module auth`; other events as they are. */
export function eventLabel(event: string | undefined): string;
