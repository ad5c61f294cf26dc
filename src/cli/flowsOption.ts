import { Option } from 'commander';

/** The commands that run, resume or answer flows take a user's module of flows (loaded by main's preAction hook). */
export const flowsOption = () => new Option('--flows <module>', "your own flows: an ES module exporting `flows` (and `answers`, `fallbacks`); default MICROTASK_FLOWS");
