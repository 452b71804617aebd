// A loopback TCP proxy in front of a test redis-server that reads the commands clients send
// and lets a test cut a connection at an exact command: before it reaches Redis, or after
// Redis got it but before its reply reaches the client. Real connections, real cuts: the
// client sees a closed socket, as when a network drops.
//
// Hand-written: the command stream only needs the byte boundaries of RESP arrays of bulk
// strings (what clients send); redis-parser gives parsed values, not where they end.
import { createServer, connect as tcpConnect, type Server, type Socket } from 'node:net';
import { HOST } from './redis-server.js';

/** What to do with one command: pass it on, drop it and cut, or pass it and cut before the reply. */
export type Verdict = 'forward' | 'cutBefore' | 'cutBeforeReply';

/** Where a complete command ends in `buf` from `at`, with its arguments; undefined if incomplete. */
function nextCommand(buf: Buffer, at: number): { end: number; args: Buffer[] } | undefined {
  const line = (from: number) => {
    const nl = buf.indexOf('\r\n', from);
    return nl < 0 ? undefined : { text: buf.toString('latin1', from, nl), next: nl + 2 };
  };
  const head = line(at);
  if (!head) return undefined;
  if (head.text[0] !== '*') throw new Error(`resp-proxy: expected a RESP array from the client, got ${JSON.stringify(head.text)}`);
  const n = Number(head.text.slice(1));
  const args: Buffer[] = [];
  let pos = head.next;
  for (let i = 0; i < n; i++) {
    const len = line(pos);
    if (!len) return undefined;
    if (len.text[0] !== '$') throw new Error(`resp-proxy: expected a bulk string, got ${JSON.stringify(len.text)}`);
    const size = Number(len.text.slice(1));
    if (len.next + size + 2 > buf.length) return undefined;
    args.push(buf.subarray(len.next, len.next + size));
    pos = len.next + size + 2;
  }
  return { end: pos, args };
}

export class RespProxy {
  readonly port: number;
  readonly url: string;
  /** Decides each command's fate (default: forward everything). */
  onCommand: (args: string[]) => Verdict = () => 'forward';
  /** Connections cut, with the command at which each was cut. */
  readonly cuts: { verdict: Verdict; command: string[] }[] = [];
  #blocked = false;
  readonly #server: Server;
  readonly #sockets = new Set<Socket>();

  private constructor(server: Server, port: number) {
    this.#server = server;
    this.port = port;
    this.url = `redis://${HOST}:${port}`;
  }

  static async start(targetPort: number): Promise<RespProxy> {
    let proxy: RespProxy | undefined;
    const server = createServer((client) => proxy!.#accept(client, targetPort));
    await new Promise<void>((resolve) => server.listen(0, HOST, resolve));
    proxy = new RespProxy(server, (server.address() as { port: number }).port);
    return proxy;
  }

  /** While blocked, new connections are closed at once (Redis looks unreachable). */
  block(on: boolean): void {
    this.#blocked = on;
  }

  #accept(client: Socket, targetPort: number): void {
    if (this.#blocked) { client.destroy(); return; }
    const upstream = tcpConnect(targetPort, HOST);
    this.#sockets.add(client).add(upstream);
    let pending = Buffer.alloc(0);
    let cut = false;
    const close = () => { client.destroy(); upstream.destroy(); };
    client.on('error', close);
    upstream.on('error', close);
    client.on('close', () => { this.#sockets.delete(client); if (!cut) upstream.destroy(); });
    upstream.on('close', () => { this.#sockets.delete(upstream); client.destroy(); });
    upstream.on('data', (d: Buffer) => { if (!cut) client.write(d); });
    client.on('data', (d: Buffer) => {
      if (cut) return;
      pending = pending.length === 0 ? d : Buffer.concat([pending, d]);
      let at = 0;
      for (;;) {
        const cmd = nextCommand(pending, at);
        if (!cmd) break;
        const args = cmd.args.map((a) => a.toString('latin1'));
        const verdict = this.onCommand(args);
        if (verdict === 'forward') {
          upstream.write(pending.subarray(at, cmd.end));
          at = cmd.end;
          continue;
        }
        cut = true;
        this.cuts.push({ verdict, command: args });
        client.destroy(); // the client gets no reply to this command, nor to anything after it
        if (verdict === 'cutBeforeReply') {
          // Redis gets the command and runs it; its reply goes nowhere.
          upstream.write(pending.subarray(at, cmd.end));
          upstream.once('data', () => upstream.destroy());
        } else upstream.destroy();
        return;
      }
      pending = pending.subarray(at);
    });
  }

  async close(): Promise<void> {
    for (const s of this.#sockets) s.destroy();
    await new Promise<void>((resolve) => this.#server.close(() => resolve()));
  }
}
