// A real redis-server for the Redis suites: 127.0.0.1 only, a random free port, a temporary
// directory, append-only file on (fsync every write), stopped after. No mocks of Redis.
//
// When redis-server is not installed the suites skip with a loud message, except under
// CI=true, where a missing server is a failure (.ci/run installs it).
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export const HOST = '127.0.0.1';
/** Every redis-cli call is bounded (generous: a loaded 2-core machine). */
const CLI_TIMEOUT_MS = 20_000;

function findBinary(name: string): string | undefined {
  const r = spawnSync('sh', ['-c', `command -v ${name}`], { encoding: 'utf8' });
  const path = r.stdout.trim();
  return r.status === 0 && path ? path : undefined;
}

export const REDIS_SERVER = findBinary('redis-server');
export const REDIS_CLI = findBinary('redis-cli');

const MISSING = 'REDIS SUITES SKIPPED: redis-server is not installed on this machine. '
  + 'Install it with `apt-get install redis-server` (Debian/Ubuntu) to run them; CI (CI=true) fails instead of skipping.';

/** Whether the Redis suites run here. Throws under CI=true when redis-server is missing. */
export function redisAvailable(): boolean {
  if (REDIS_SERVER && REDIS_CLI) return true;
  if (process.env.CI === 'true') throw new Error(`redis-server is required under CI=true. ${MISSING}`);
  const bar = '!'.repeat(100);
  console.warn(`\n${bar}\n${MISSING}\n${bar}\n`);
  return false;
}

/** A free TCP port on 127.0.0.1 (the OS picks it; the listener closes before we return). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, HOST, () => {
      const address = server.address();
      server.close(() => (typeof address === 'object' && address ? resolve(address.port) : reject(new Error('no port'))));
    });
  });
}

export interface RedisServerOptions {
  /** Extra `--name value` pairs for redis-server (e.g. { requirepass: 'secret' }). */
  config?: Record<string, string>;
}

export class RedisTestServer {
  readonly port: number;
  readonly dir: string;
  readonly url: string;
  readonly #config: Record<string, string>;
  #child: ChildProcess | undefined;
  #log = '';

  private constructor(port: number, dir: string, config: Record<string, string>) {
    this.port = port;
    this.dir = dir;
    this.url = `redis://${HOST}:${port}`;
    this.#config = config;
  }

  /** Start a server; resolves once it answers PING. */
  static async start(options: RedisServerOptions = {}): Promise<RedisTestServer> {
    if (!REDIS_SERVER) throw new Error(MISSING);
    // A port freePort() found free can be taken before redis-server binds it (another test
    // process, an outgoing connection): start again on new ports, a few times.
    for (let attempt = 1; ; attempt++) {
      const dir = mkdtempSync(join(tmpdir(), 'shard-mapper-redis-'));
      const config = { ...options.config };
      // A Cluster node also listens on its bus port, by default port + 10000 (out of range
      // above 55535, maybe taken below): choose a free one too.
      if (config['cluster-enabled'] === 'yes' && config['cluster-port'] === undefined) config['cluster-port'] = String(await freePort());
      const server = new RedisTestServer(await freePort(), dir, config);
      try {
        await server.#spawn();
        return server;
      } catch (error) {
        await server.dispose();
        if (attempt >= 5 || !/Address already in use/.test((error as Error).message)) throw error;
      }
    }
  }

  async #spawn(): Promise<void> {
    const args = [
      '--bind', HOST, '--port', String(this.port), '--dir', this.dir,
      '--appendonly', 'yes', '--appendfsync', 'always', '--save', '',
      '--protected-mode', 'yes', '--daemonize', 'no', '--loglevel', 'warning',
    ];
    for (const [k, v] of Object.entries(this.#config)) args.push(`--${k}`, v);
    const child = spawn(REDIS_SERVER!, args, { cwd: this.dir, stdio: ['ignore', 'pipe', 'pipe'] });
    this.#child = child;
    child.stdout!.on('data', (d: Buffer) => { this.#log = (this.#log + d.toString()).slice(-4000); });
    child.stderr!.on('data', (d: Buffer) => { this.#log = (this.#log + d.toString()).slice(-4000); });
    await this.#waitReady();
  }

  async #waitReady(): Promise<void> {
    for (let i = 0; i < 200; i++) {
      if (this.#child?.exitCode !== null) throw new Error(`redis-server exited (${this.#child?.exitCode}):\n${this.#log}`);
      const auth = this.#config.requirepass ? ['-a', this.#config.requirepass, '--no-auth-warning'] : [];
      // Bounded: spawnSync blocks this thread, so no test timeout could end a PING that
      // never gets its answer (something else that took the port and does not reply).
      const r = spawnSync(REDIS_CLI!, ['-h', HOST, '-p', String(this.port), ...auth, 'PING'], { encoding: 'utf8', timeout: CLI_TIMEOUT_MS });
      if (r.stdout?.trim() === 'PONG') return;
      await new Promise((res) => setTimeout(res, 25));
    }
    throw new Error(`redis-server on port ${this.port} did not answer PING:\n${this.#log}`);
  }

  /** Run redis-cli against this server; returns its stdout. */
  cli(...args: string[]): string {
    const auth = this.#config.requirepass ? ['-a', this.#config.requirepass, '--no-auth-warning'] : [];
    const r = spawnSync(REDIS_CLI!, ['-h', HOST, '-p', String(this.port), ...auth, ...args], { encoding: 'utf8', timeout: CLI_TIMEOUT_MS });
    if (r.error) throw new Error(`redis-cli ${args.join(' ')} on port ${this.port}: ${r.error.message} (a frozen or gone server?)`);
    if (r.status !== 0) throw new Error(`redis-cli ${args.join(' ')}: ${r.stderr}`);
    return r.stdout.trim();
  }

  /** Freeze the process (SIGSTOP): its connections stay open, the kernel still takes what
   *  clients send, nothing is answered until thaw(). */
  freeze(): void {
    if (!this.#child || this.#child.exitCode !== null) throw new Error('redis-server is not running');
    this.#child.kill('SIGSTOP');
  }

  /** Let a frozen process run again (SIGCONT). */
  thaw(): void {
    this.#child?.kill('SIGCONT');
  }

  /** Stop the process (SIGTERM: with appendfsync always every write is already on disk). */
  async stop(signal: NodeJS.Signals = 'SIGTERM'): Promise<void> {
    const child = this.#child;
    this.#child = undefined;
    if (!child || child.exitCode !== null) return;
    child.kill('SIGCONT'); // a frozen server would not act on the signal below
    await new Promise<void>((resolve) => {
      const timer = setTimeout(() => child.kill('SIGKILL'), 5000);
      child.once('exit', () => { clearTimeout(timer); resolve(); });
      child.kill(signal);
    });
  }

  /** Stop and start again on the same port and directory (the append-only file is replayed). */
  async restart(downMs = 0, signal: NodeJS.Signals = 'SIGTERM'): Promise<void> {
    await this.stop(signal);
    if (downMs > 0) await new Promise((r) => setTimeout(r, downMs));
    await this.#spawn();
  }

  /** Stop and delete the directory. */
  async dispose(): Promise<void> {
    await this.stop();
    rmSync(this.dir, { recursive: true, force: true });
  }
}

/** Three masters with cluster-enabled yes on 127.0.0.1, joined with `redis-cli --cluster create`. */
export class RedisTestCluster {
  readonly nodes: RedisTestServer[];
  private constructor(nodes: RedisTestServer[]) {
    this.nodes = nodes;
  }

  static async start(masters = 3): Promise<RedisTestCluster> {
    const nodes: RedisTestServer[] = [];
    try {
      for (let i = 0; i < masters; i++) {
        nodes.push(await RedisTestServer.start({ config: { 'cluster-enabled': 'yes', 'cluster-config-file': 'nodes.conf', 'cluster-node-timeout': '2000' } }));
      }
      const r = spawnSync(REDIS_CLI!, ['--cluster', 'create', ...nodes.map((n) => `${HOST}:${n.port}`), '--cluster-replicas', '0', '--cluster-yes'], { encoding: 'utf8', timeout: 60_000 });
      if (r.status !== 0) throw new Error(`redis-cli --cluster create failed: ${r.stdout}\n${r.stderr}`);
      // Wait until every node reports the cluster as ok.
      for (let i = 0; i < 200; i++) {
        if (nodes.every((n) => /cluster_state:ok/.test(n.cli('CLUSTER', 'INFO')))) return new RedisTestCluster(nodes);
        await new Promise((res) => setTimeout(res, 50));
      }
      throw new Error('the test cluster never reached cluster_state:ok');
    } catch (error) {
      for (const n of nodes) await n.dispose();
      throw error;
    }
  }

  get startupNodes(): { host: string; port: number }[] {
    return this.nodes.map((n) => ({ host: HOST, port: n.port }));
  }

  async dispose(): Promise<void> {
    for (const n of this.nodes) await n.dispose();
  }
}
