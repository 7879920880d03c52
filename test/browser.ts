// What the browser tests share: Debian's Chromium, its flags (../shared/docs/BROWSER.md), and why a test
// cannot run where it is missing.
import { existsSync } from 'node:fs';

export const CHROMIUM = '/usr/bin/chromium';
/** BROWSER.md's flags: WebGPU, offline; the adapter pinned to SwiftShader so that every machine runs the same one. */
export const FLAGS = [
  '--enable-unsafe-webgpu',
  '--use-webgpu-adapter=swiftshader',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--no-first-run',
  '--disable-quic',
];

/** Why a browser test cannot run here (`what` names it in the reason), or undefined. */
export async function browserSkipReason(what: string): Promise<string | undefined> {
  if (!existsSync(CHROMIUM)) return `${what} skipped: no Chromium at ${CHROMIUM} (Debian's chromium package; .ci/run installs it)`;
  try {
    await import('playwright-core');
  } catch (e) {
    return `${what} skipped: playwright-core cannot be loaded (${e instanceof Error ? e.message.split('\n')[0] : e}); run npm ci`;
  }
  return undefined;
}
