import { z } from 'zod';

/**
 * Pieces the built-in patterns' input schemas share. `key` is optional at the edge: the
 * flow's id is used when it is absent.
 */
export const key = z.string().min(1).max(500).optional();
export const threshold = z.number().min(0).max(1);
export const count = (max: number) => z.number().int().min(1).max(max);
