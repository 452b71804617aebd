// A test fixture run as a child process (node's fork, IPC): the Redis suites start producer
// nodes and consumers as separate processes so a SIGKILL hits a real process. Messages are
// objects with a `type`; the streamed kinds (deliveries, status snapshots) go to the test's
// handler only, every other kind is also queued for `waitFor`.
import { fork, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { until } from './delivery.js';

export type FixtureMessage = { type: string; [k: string]: unknown };

/** Kinds a fixture sends many of; `waitFor` never waits on them (read `last` instead). */
const STREAMED = new Set(['got', 'status', 'owned']);

export class FixtureProcess {
  readonly proc: ChildProcess;
  /** Messages not taken by `waitFor` yet (streamed kinds excluded). */
  readonly messages: FixtureMessage[] = [];
  /** The newest message of each kind. */
  last: Record<string, FixtureMessage> = {};
  exited = false;

  /** Start `test/fixtures/<script>` with `args` as its argv. */
  constructor(readonly name: string, script: string, args: string[], onMessage: (m: FixtureMessage, from: FixtureProcess) => void = () => {}) {
    const path = fileURLToPath(new URL(`../fixtures/${script}`, import.meta.url));
    this.proc = fork(path, args, { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
    this.proc.on('message', (m: FixtureMessage) => {
      this.last[m.type] = m;
      if (!STREAMED.has(m.type)) this.messages.push(m);
      onMessage(m, this);
    });
    this.proc.on('exit', () => { this.exited = true; });
  }

  send(message: string): void {
    if (!this.exited) this.proc.send(message);
  }

  /** The next message of `type`; fails the test when it does not come within `limitMs`. */
  async waitFor(type: string, limitMs = 60_000): Promise<FixtureMessage> {
    await until(() => this.messages.some((m) => m.type === type) || this.exited, `${this.name}: ${type}`, limitMs);
    const m = this.messages.find((x) => x.type === type);
    if (!m) throw new Error(`${this.name} exited before ${type}`);
    this.messages.splice(this.messages.indexOf(m), 1);
    return m;
  }

  /** SIGKILL (resolves once it exited; at once if it already had). */
  kill(): Promise<void> {
    return new Promise((resolve) => {
      if (this.exited) { resolve(); return; }
      this.proc.once('exit', () => resolve());
      this.proc.kill('SIGKILL');
    });
  }
}
