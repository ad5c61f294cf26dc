import type { Command } from 'commander';
import { flowsOption } from '../flowsOption.js';
import { sendCommand, type SendOptions } from '../send.js';

/** `microtask send`, `approve` and `reject`: an event to a flow that waits for one (src/cli/send.ts sends it). */
export function addSendCommands(program: Command, setExit: (code: number) => void) {
  program
    .command('send')
    .description('send an event to a flow that waits for one (a person\'s answer, an outside event)')
    .argument('<flowId>', 'the flow, as `microtask flows` lists it')
    .argument('<event>', 'the event type the flow waits for (`microtask show <flowId>` says which)')
    .option('--data <json>', 'the event\'s data, JSON (e.g. \'{"score":0.9,"feedback":"…"}\')')
    .option('--id <eventId>', 'an id that makes sending again harmless (default: a new one)')
    .addOption(flowsOption())
    .addHelpText(
      'after',
      '\nChecked against what the flow waits for now, then kept: the process running the flow applies it\n' +
        'at once, or the flow\'s resume does. Exit 2 when the flow waits for no such event or the data is wrong.',
    )
    .action(async (flowId: string, event: string, options: SendOptions) => {
      setExit(await sendCommand(flowId, event, options));
    });

  for (const [name, approved] of [['approve', true], ['reject', false]] as const) {
    program
      .command(name)
      .description(`${approved ? 'approve' : 'reject'} what a flow waiting for a person's review shows (the reentrant pipeline's personReview, the tool builder's approval)`)
      .argument('<flowId>', 'the flow, as `microtask flows` lists it')
      .option('--feedback <text>', approved ? 'a note for the record' : 'what to change: the next pass gets it')
      .option('--id <eventId>', 'an id that makes sending again harmless (default: a new one)')
      .addOption(flowsOption())
      .addHelpText('after', `\nSends the event \`review\` with {"approved": ${approved}, "feedback": …}; a feedback loop waiting for a score takes\n\`microtask send <flowId> score --data '{"score":0.9,"feedback":"…"}'\`.`)
      .action(async (flowId: string, options: { feedback?: string; id?: string }) => {
        const data = JSON.stringify({ approved, feedback: options.feedback ?? '' });
        setExit(await sendCommand(flowId, 'review', { data, ...(options.id ? { id: options.id } : {}) }));
      });
  }
}
