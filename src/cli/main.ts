#!/usr/bin/env node
/** Entry point of the `flashattn` command (package.json "bin"). */
import { createProgram } from './program.js';

createProgram()
  .parseAsync(process.argv)
  .catch((e: unknown) => {
    process.stderr.write(`flashattn: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
    process.exitCode = 1;
  });
