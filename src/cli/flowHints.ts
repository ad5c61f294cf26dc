import type { FlowWait } from '../flowWaits.js';

/** Ctrl-C during a one-shot flow: its snapshot is saved, so say how to finish it. */
export function hintResumeOnInterrupt(flowId: string) {
  process.once('SIGINT', () => {
    process.stderr.write(`\ninterrupted; the flow is saved: finish it with \`microtask resume ${flowId}\`\n`);
    process.exit(130);
  });
}

/** A flow that starts waiting for a person: say for what, until when, and how to answer. */
export function hintAnswer(flowId: string, waits: FlowWait[], out: NodeJS.WritableStream = process.stderr) {
  for (const wait of waits) {
    const how = wait.events.includes('review')
      ? `\`microtask approve ${flowId}\` or \`microtask reject ${flowId} --feedback '…'\``
      : wait.events.map((type) => `\`microtask send ${flowId} ${type} --data '{…}'\``).join(' or ');
    const until = wait.until ? ` (until ${wait.until})` : '';
    out.write(`flow ${flowId} waits for ${wait.for}${until}: answer from another terminal with ${how}\n`);
  }
}
