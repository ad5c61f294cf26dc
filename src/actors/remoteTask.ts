import { fromPromise } from 'xstate';
import { silentLogger } from '../log.js';
import { flowIdOf, type MicrotaskResult } from '../contracts/microtask.js';
import type { TaskInput, TaskJob } from '../contracts/task.js';
import { DEFAULT_TIMEOUT_MS } from './microtask.js';
import { remoteResults, type RemoteMicrotaskOptions } from './remoteMicrotask.js';
import { checkTaskInput, taskFailure, taskTimeoutMs, type Tasks } from './task.js';

export interface RemoteTaskOptions extends Pick<RemoteMicrotaskOptions, 'queue' | 'results' | 'resultsWatch' | 'graceMs' | 'busOutageMs' | 'logger'> {
  /** The module's tasks as this process knows them: only their timeouts are read (the workers run them). */
  tasks?: Tasks;
  /** A task's timeout when its definition gives none, or this process does not know it (MICROTASK_TIMEOUT_MS). */
  defaultTimeoutMs?: number;
}

/**
 * The task actor when tasks run on workers: the task goes on the work queue the
 * microtasks take (`kind: 'task'`, its idempotency key the message id), and its result is
 * waited for in the results bucket, as a remote microtask's is (createRemoteMicrotaskLogic:
 * a result stored already is returned, the job sent along with the read finds it too and
 * does not run the task; a bus in trouble is retried, then stops the flow, resumable). A
 * worker whose module lacks the task answers `unknown_task`, naming it; when no worker
 * answers by the deadline and grace, the run ends `timeout`. Share `resultsWatch` with the
 * microtask actor: one watch of the bucket per process.
 */
export function createRemoteTaskLogic(options: RemoteTaskOptions) {
  const logger = options.logger ?? silentLogger;
  const waitFor = remoteResults(options);
  return fromPromise<MicrotaskResult, TaskInput>(async ({ input: raw, signal }) => {
    const started = performance.now();
    // Checked here too: JSON.stringify would send a Date as a string and drop a function without a word.
    const checked = checkTaskInput(raw);
    if ('error' in checked) return taskFailure(raw ?? {}, checked.error, performance.now() - started);
    const { input } = checked;
    const job: TaskJob = {
      kind: 'task',
      task: input.task,
      key: input.key,
      ...(input.input !== undefined ? { input: input.input } : {}),
      deadlineAt: Date.now() + taskTimeoutMs(options.tasks, input.task, options.defaultTimeoutMs ?? DEFAULT_TIMEOUT_MS),
    };
    return waitFor(
      {
        key: input.key,
        what: `task ${input.task}`,
        log: logger.child({ flowId: flowIdOf(input.key), taskId: input.key, task: input.task }),
        deadlineAt: job.deadlineAt,
        body: () => JSON.stringify(job),
        failure: (error) => taskFailure(input, error, performance.now() - started),
      },
      signal,
    );
  });
}
