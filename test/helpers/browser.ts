// Debian's chromium driven by playwright-core (no browser download): a fresh profile in a temp
// directory, headless, no network of its own beyond loopback. close() closes it and, should the
// browser outlive that, kills it by the pid found for this profile; the profile is removed.

import fs from 'node:fs';
import path from 'node:path';
import { chromium, type BrowserContext } from 'playwright-core';

export const CHROMIUM = '/usr/bin/chromium';

export const CHROMIUM_ARGS = ['--no-sandbox', '--headless', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'];

export interface Browser {
  context: BrowserContext;
  /** The browser's main process. */
  pid: number;
  close(): Promise<void>;
}

/** The pid of the child of this process whose command line names `profile` (the browser's main process). */
function browserPid(profile: string): number {
  for (const entry of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = fs.readFileSync(`/proc/${entry}/stat`, 'utf8');
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      if (ppid !== process.pid) continue;
      if (fs.readFileSync(`/proc/${entry}/cmdline`, 'utf8').includes(profile)) return Number(entry);
    } catch {
      // the process went away while we looked
    }
  }
  throw new Error(`no chromium process for ${profile}`);
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

export async function launchChromium(dir: string, viewport = { width: 1280, height: 900 }): Promise<Browser> {
  if (!fs.existsSync(CHROMIUM)) throw new Error(`${CHROMIUM} is missing: scripts/setup.sh --with-browser installs Debian's chromium`);
  const profile = fs.mkdtempSync(path.join(dir, 'chromium-profile-'));
  const context = await chromium.launchPersistentContext(profile, { executablePath: CHROMIUM, headless: true, args: CHROMIUM_ARGS, acceptDownloads: true, viewport, timeout: 60_000 });
  const pid = browserPid(profile);
  return {
    context,
    pid,
    async close() {
      await context.close().catch(() => undefined);
      for (let i = 0; i < 50 && alive(pid); i++) await new Promise((r) => setTimeout(r, 100));
      if (alive(pid)) process.kill(pid, 'SIGKILL');
      fs.rmSync(profile, { recursive: true, force: true });
    },
  };
}
