/** A state value as people read it: `verifying`, `building.modules`, `a.x, b.y` for parallel regions. */
export function formatState(value: unknown): string {
  if (value === null || value === undefined) return '-';
  if (typeof value === 'string') return value;
  if (typeof value !== 'object') return String(value);
  const parts = Object.entries(value as Record<string, unknown>).map(([key, child]) => {
    const inner = formatState(child);
    return child && typeof child === 'object' && Object.keys(child).length > 1 ? `${key}.(${inner})` : `${key}.${inner}`;
  });
  return parts.join(', ');
}

export const formatTokens = (input: number, output: number) =>
  `${(input + output).toLocaleString('en-US')} tokens (${input.toLocaleString('en-US')} in, ${output.toLocaleString('en-US')} out)`;

export const formatMs = (ms: number) => (ms < 1_000 ? `${Math.round(ms)} ms` : `${(ms / 1_000).toFixed(ms < 10_000 ? 2 : 1)} s`);
