// Finds a Chromium for the browser tests, so `npm test` passes on a machine where nobody
// installed a browser by hand. Order: CHROMIUM_PATH, a system Chromium or Chrome, then the
// Chromium that ships inside the @sparticuz/chromium devDependency (its binary is in the
// npm package; it is unpacked into the temp directory on first use).
// SHARD_MAPPER_BROWSER=bundled skips the first two (to check the bundled one works on a
// machine that also has a system browser); SHARD_MAPPER_BROWSER=system skips the bundled one.
import { accessSync, constants } from 'node:fs';
import { delimiter, join } from 'node:path';

export interface FoundChromium {
  executablePath: string;
  /** Where it came from, for failure messages and logs. */
  source: 'CHROMIUM_PATH' | 'system' | 'bundled';
}

const SYSTEM_NAMES = ['chromium', 'chromium-browser', 'google-chrome', 'google-chrome-stable', 'chrome'];
const SYSTEM_PATHS = [
  '/usr/bin/chromium', '/usr/bin/chromium-browser', '/usr/bin/google-chrome', '/usr/bin/google-chrome-stable',
  '/snap/bin/chromium', '/opt/google/chrome/chrome',
  '/Applications/Google Chrome.app/Contents/MacOS/Google Chrome',
  '/Applications/Chromium.app/Contents/MacOS/Chromium',
];

function executable(path: string): boolean {
  try {
    accessSync(path, constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

/** A Chromium or Chrome on PATH or in the usual install locations, if any. */
export function systemChromium(env: NodeJS.ProcessEnv = process.env): string | undefined {
  const dirs = (env.PATH ?? '').split(delimiter).filter(Boolean);
  for (const name of SYSTEM_NAMES) {
    for (const dir of dirs) {
      const candidate = join(dir, name);
      if (executable(candidate)) return candidate;
    }
  }
  return SYSTEM_PATHS.find(executable);
}

/** The Chromium inside the @sparticuz/chromium package (unpacked on first call). */
export async function bundledChromium(): Promise<string> {
  const { default: Chromium } = await import('@sparticuz/chromium');
  return Chromium.executablePath();
}

export async function findChromium(env: NodeJS.ProcessEnv = process.env): Promise<FoundChromium> {
  const mode = env.SHARD_MAPPER_BROWSER ?? 'auto';
  if (mode !== 'auto' && mode !== 'bundled' && mode !== 'system') {
    throw new Error(`SHARD_MAPPER_BROWSER must be auto, bundled or system, got ${JSON.stringify(mode)}`);
  }
  if (mode !== 'bundled') {
    const fromEnv = env.CHROMIUM_PATH;
    if (fromEnv) {
      if (!executable(fromEnv)) throw new Error(`CHROMIUM_PATH=${fromEnv} is not an executable file`);
      return { executablePath: fromEnv, source: 'CHROMIUM_PATH' };
    }
    const system = systemChromium(env);
    if (system) return { executablePath: system, source: 'system' };
    if (mode === 'system') throw new Error('SHARD_MAPPER_BROWSER=system: no Chromium or Chrome on PATH or in the usual places');
  }
  try {
    return { executablePath: await bundledChromium(), source: 'bundled' };
  } catch (error) {
    throw new Error(
      'no Chromium found: set CHROMIUM_PATH, install one (apt-get install chromium), or run npm ci so the '
      + `@sparticuz/chromium devDependency is there (it failed: ${(error as Error).message})`,
    );
  }
}
