import { createHash } from 'node:crypto';

/**
 * Every subject, stream and bucket name of the public protocol, from one prefix
 * (MICROTASK_SUBJECT_PREFIX, `microtask` by default). docs/protocol.md documents them.
 */
export function subjects(prefix = 'microtask') {
  return {
    toolBuildRequest: `${prefix}.toolbuild.request`,
    flowStart: (pattern: string) => `${prefix}.flow.start.${pattern}`,
    flowStartAll: `${prefix}.flow.start.*`,
    flowGet: `${prefix}.flow.get`,
    flowCancel: `${prefix}.flow.cancel`,
    flowEvents: (flowId: string) => `${prefix}.flow.${flowId}.events`,
    flowDone: (flowId: string) => `${prefix}.flow.${flowId}.done`,
    /** A flow's journal: its steps (with snapshots), microtasks and lifecycle, for people. */
    flowHistory: (flowId: string) => `${prefix}.flow.${flowId}.history`,
    /** Sends an event to a flow (a person's answer): checked against what it waits for, then kept in its inbox. */
    flowSend: `${prefix}.flow.send`,
    /** A flow's inbox: events kept until the flow applies them; any client may publish here, daemon running or not. */
    flowInbox: (flowId: string) => `${prefix}.flow.${flowId}.inbox`,
    /** The flow id of an inbox subject; undefined when it is not one. */
    flowOfInbox: (subject: string) => {
      const parts = subject.split('.');
      return parts.length === prefix.split('.').length + 3 && parts.at(-1) === 'inbox' ? parts.at(-2) : undefined;
    },
    /** The stream holding every flow's inbox. */
    inboxLog: 'inbox',
    /** Errors of requests that had no reply subject to answer on. */
    errors: `${prefix}.errors`,
    /** Where a worker announces a task's result (also stored in the results bucket). */
    taskResult: (key: string) => `${prefix}.result.${createHash('sha256').update(key).digest('hex').slice(0, 32)}`,
    /** Tasks that failed every delivery, with their error. */
    deadLetters: `${prefix}.tasks.dead`,
    /** The stream holding every flow's events and done messages, replayable. */
    flowLog: 'flows',
    flowLogSubjects: [`${prefix}.flow.*.events`, `${prefix}.flow.*.done`],
    /** The stream holding every flow's journal (`microtask show`, the inspector). */
    historyLog: 'history',
    historyLogSubjects: [`${prefix}.flow.*.history`],
    taskQueue: 'tasks',
    resultsBucket: 'results',
    flowsBucket: 'flows',
    snapshotsBucket: 'snapshots',
    /** Daemons' lease heartbeats (`hb.<owner>`) and which flows each holds (`own.<owner>.<flowId>`): src/leases.ts. */
    leasesBucket: 'leases',
  };
}
export type Subjects = ReturnType<typeof subjects>;
