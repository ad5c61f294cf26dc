import { InvalidArgumentError } from 'commander';

/** Parsers of option values: a wrong one is a usage error commander reports with the option's name. */
export const port = (value: string) => {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 0 || n > 65_535) throw new InvalidArgumentError('a port is a whole number from 0 to 65535');
  return n;
};
export const positiveInt = (what: string) => (value: string) => {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 1) throw new InvalidArgumentError(`${what} must be a whole number of at least 1`);
  return n;
};
export const unitInterval = (value: string) => {
  const n = Number(value);
  if (!Number.isFinite(n) || n < 0 || n > 1) throw new InvalidArgumentError('the threshold is a number from 0 to 1');
  return n;
};
