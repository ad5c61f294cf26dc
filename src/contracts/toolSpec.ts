import { z } from 'zod';

/**
 * A tool the tool builder is asked to build. Names become directory and file names, so
 * they are held to a safe alphabet here, at the edge: `../../x`, `/etc`, `a/b` or `.x`
 * never reach the file system (the writer checks again anyway).
 */
const toolName = z
  .string()
  .regex(/^[a-z][a-z0-9-]{0,62}[a-z0-9]$/, {
    error:
      'a tool name is 2 to 64 characters: lower-case letters, digits and dashes, starting with a letter (it becomes a directory and an npm package name)',
  });

const moduleName = z
  .string()
  .regex(/^[a-z][a-zA-Z0-9]{0,39}$/, {
    error:
      'a module name is 1 to 40 letters and digits, starting with a lower-case letter (it becomes src/<name>.js and an identifier); no dots, slashes or dashes',
  })
  .refine((name) => name !== 'cli', { error: '"cli" is taken by the entry point src/cli.js' });

export const ToolSpecSchema = z
  .object({
    name: toolName,
    description: z.string().trim().min(1, { error: 'say what the tool does' }).max(2_000),
    modules: z
      .array(
        z.object({
          name: moduleName,
          purpose: z.string().trim().min(1, { error: 'say what the module does' }).max(1_000),
        }),
      )
      .min(1, { error: 'a tool needs at least one module' })
      .max(20, { error: 'at most 20 modules: split a bigger tool into several' }),
    requestId: z.string().min(1).max(200).optional(),
  })
  .superRefine((spec, ctx) => {
    const seen = new Set<string>();
    spec.modules.forEach((module, index) => {
      const folded = module.name.toLowerCase();
      if (seen.has(folded)) {
        ctx.addIssue({
          code: 'custom',
          path: ['modules', index, 'name'],
          message: `module "${module.name}" appears twice (names are compared without case: they become file names)`,
        });
      }
      seen.add(folded);
    });
  });
export type ToolSpec = z.infer<typeof ToolSpecSchema>;
export type ModuleSpec = ToolSpec['modules'][number];
