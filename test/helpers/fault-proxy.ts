// A loopback TCP proxy between Redis clients and a redis-server, for fault tests: it forwards
// bytes both ways and, on request, cuts every connection, delays replies, or drops the reply of
// a chosen command (then hangs the connection for a while and cuts it, as a network partition
// that ends in a reset would). Listens on 127.0.0.1 only, on a port the OS picks.
//
// To find "the reply of a command" it parses just enough RESP (2 and 3): the client's
// requests as arrays of bulk strings, the server's replies as whole values, and pairs them
// in order (a connection that subscribes leaves the pairing: pushes have no request).
import { createServer, connect, type Server, type Socket } from 'node:net';
import { afterAll, beforeAll } from 'vitest';
import { HOST, RedisTestServer } from './redis-server.js';

/** End offset of the RESP value starting at `at`, or -1 when it is not complete yet. */
export function respValueEnd(buf: Buffer, at: number): number {
  if (at >= buf.length) return -1;
  const lineEnd = buf.indexOf('\r\n', at);
  if (lineEnd < 0) return -1;
  const type = String.fromCharCode(buf[at]!);
  const head = buf.toString('latin1', at + 1, lineEnd);
  const next = lineEnd + 2;
  switch (type) {
    case '+': case '-': case ':': case '_': case ',': case '#': case '(':
      return next;
    case '$': case '!': case '=': {
      const n = Number(head);
      if (n < 0) return next; // null bulk string
      return buf.length >= next + n + 2 ? next + n + 2 : -1;
    }
    case '*': case '~': case '>': case '%': case '|': {
      let n = Number(head);
      if (n < 0) return next; // null array
      if (type === '%' || type === '|') n *= 2;
      let pos = next;
      for (let i = 0; i < n; i++) {
        pos = respValueEnd(buf, pos);
        if (pos < 0) return -1;
      }
      return pos;
    }
    default:
      throw new Error(`fault proxy: unexpected RESP type byte ${JSON.stringify(type)} at ${at}`);
  }
}

/** The words of a request (an array of bulk strings), or undefined for anything else. */
function requestWords(buf: Buffer, start: number, end: number): string[] | undefined {
  if (buf[start] !== 0x2a /* '*' */) return undefined;
  const words: string[] = [];
  let pos = buf.indexOf('\r\n', start) + 2;
  while (pos < end) {
    const lineEnd = buf.indexOf('\r\n', pos);
    const n = Number(buf.toString('latin1', pos + 1, lineEnd));
    words.push(buf.toString('utf8', lineEnd + 2, lineEnd + 2 + n));
    pos = lineEnd + 2 + n + 2;
  }
  return words;
}

/** Whether a reply carries data: a non-empty array or map (not null, not an error, not a status). */
const carriesData = (buf: Buffer, start: number): boolean => {
  const type = buf[start];
  if (type !== 0x2a /* '*' */ && type !== 0x25 /* '%' */) return false;
  const n = Number(buf.toString('latin1', start + 1, buf.indexOf('\r\n', start)));
  return n > 0;
};

export interface DropRule {
  /** Which request's reply to drop (the words as the client sent them). */
  matches: (words: string[]) => boolean;
  /** Drop only a reply that carries data (a non-empty array): an XREADGROUP that read nothing, or was redirected, loses nothing. */
  onlyWithData: boolean;
  /** How long the connection hangs (nothing forwarded either way) before it is cut. */
  hangMs: number;
}

interface Link {
  client: Socket;
  server: Socket;
  fromClient: Buffer;
  fromServer: Buffer;
  /** Requests sent and not answered yet, in order. */
  awaiting: string[][];
  subscribed: boolean;
  /** Set once a reply was swallowed: nothing more passes; the link is cut after the hang. */
  dead: boolean;
  /** When the last delayed write to the client is due (keeps delayed replies in order). */
  replyDueAt: number;
  /** Replies waiting out a delay, oldest first. */
  delayed: { due: number; bytes: Buffer }[];
  /** Request bytes kept back by a hold (from the held request on), until it is released. */
  heldBytes: Buffer[] | undefined;
}

/** A request kept from the server until `release()`: the test decides when it runs. */
export interface HeldRequest {
  /** Resolves with the request's words once a request matching the hold arrived (and was kept back). */
  readonly arrived: Promise<string[]>;
  /** Resolves once the server's reply to it came back to the proxy (passed on or dropped). */
  readonly answered: Promise<void>;
  /** Send it (and whatever the client sent after it) on to the server. */
  release(): void;
}

interface HoldRule {
  matches: (words: string[]) => boolean;
  link?: Link;
  words?: string[];
  arrived: (words: string[]) => void;
  answered: () => void;
}

export interface ProxyCounts {
  connections: number;
  cuts: number;
  /** Connections cut by cutAll() (each cut that found them open). */
  linksCut: number;
  /** Replies swallowed by a drop rule (each carried data when the rule asked for it). */
  droppedReplies: number;
  delayedReplies: number;
}

export class FaultProxy {
  readonly port: number;
  readonly #server: Server;
  readonly #links = new Set<Link>();
  readonly #target: { host: string; port: number };
  #drops: DropRule[] = [];
  #holds: HoldRule[] = [];
  /** Held requests (by their words array) whose reply the test waits for. */
  readonly #heldAnswers = new Map<string[], () => void>();
  #delayMs = 0;
  readonly counts: ProxyCounts = { connections: 0, cuts: 0, linksCut: 0, droppedReplies: 0, delayedReplies: 0 };
  /** The requests whose replies were dropped, for the test's own checks and messages. */
  readonly dropped: string[][] = [];

  private constructor(server: Server, port: number, target: { host: string; port: number }) {
    this.#server = server;
    this.port = port;
    this.#target = target;
    server.on('connection', (socket) => this.#accept(socket));
  }

  /** A proxy to `targetPort` on 127.0.0.1, listening on a random 127.0.0.1 port. */
  static start(targetPort: number): Promise<FaultProxy> {
    return new Promise((resolve, reject) => {
      const server = createServer();
      server.once('error', reject);
      server.listen(0, HOST, () => {
        const address = server.address();
        if (typeof address !== 'object' || !address) { reject(new Error('fault proxy: no port')); return; }
        resolve(new FaultProxy(server, address.port, { host: HOST, port: targetPort }));
      });
    });
  }

  get url(): string {
    return `redis://${HOST}:${this.port}`;
  }

  /** Open connections right now. */
  get open(): number {
    return this.#links.size;
  }

  /** Drop the reply of the next request `matches` accepts (on any connection), once. */
  dropNextReply(matches: DropRule['matches'], options: { onlyWithData?: boolean; hangMs?: number } = {}): void {
    this.#drops.push({ matches, onlyWithData: options.onlyWithData ?? true, hangMs: options.hangMs ?? 0 });
  }

  /**
   * Keep the next request `matches` accepts (on any connection) from the server until the
   * returned handle's `release()`: its client waits as on a stalled network, then the request
   * runs late — after whatever the test did meanwhile. Later requests on that connection wait
   * behind it (their order is kept).
   */
  holdNextRequest(matches: (words: string[]) => boolean): HeldRequest {
    let arrived!: (words: string[]) => void;
    let answered!: () => void;
    const arrivedP = new Promise<string[]>((r) => { arrived = r; });
    const answeredP = new Promise<void>((r) => { answered = r; });
    const rule: HoldRule = { matches, arrived, answered };
    this.#holds.push(rule);
    return {
      arrived: arrivedP,
      answered: answeredP,
      release: () => {
        const i = this.#holds.indexOf(rule);
        if (i >= 0) this.#holds.splice(i, 1);
        const link = rule.link;
        if (!link?.heldBytes) return;
        const bytes = Buffer.concat(link.heldBytes);
        link.heldBytes = undefined;
        if (this.#links.has(link)) link.server.write(bytes);
      },
    };
  }

  /** Drop rules not used yet. */
  get pendingDrops(): number {
    return this.#drops.length;
  }

  clearDrops(): void {
    this.#drops = [];
  }

  /** Hold every reply this long before passing it on (0: none); order is kept. */
  delayReplies(ms: number): void {
    this.#delayMs = ms;
  }

  /** Reset every open connection (both sides), as a network failure would. */
  cutAll(): number {
    this.counts.cuts++;
    const n = this.#links.size;
    this.counts.linksCut += n;
    for (const link of [...this.#links]) this.#cut(link);
    return n;
  }

  async close(): Promise<void> {
    this.#drops = [];
    for (const link of [...this.#links]) this.#cut(link);
    await new Promise<void>((resolve) => this.#server.close(() => resolve()));
  }

  #accept(client: Socket): void {
    this.counts.connections++;
    const server = connect(this.#target.port, this.#target.host);
    const link: Link = { client, server, fromClient: Buffer.alloc(0), fromServer: Buffer.alloc(0), awaiting: [], subscribed: false, dead: false, replyDueAt: 0, delayed: [], heldBytes: undefined };
    this.#links.add(link);
    client.setNoDelay(true);
    server.setNoDelay(true);
    const end = () => this.#cut(link);
    client.on('error', end).on('close', end);
    server.on('error', end).on('close', end);
    client.on('data', (chunk: Buffer) => this.#onRequestBytes(link, chunk));
    server.on('data', (chunk: Buffer) => this.#onReplyBytes(link, chunk));
  }

  #cut(link: Link): void {
    if (!this.#links.delete(link)) return;
    link.client.resetAndDestroy();
    link.server.resetAndDestroy();
  }

  #onRequestBytes(link: Link, chunk: Buffer): void {
    if (link.dead) return;
    link.fromClient = Buffer.concat([link.fromClient, chunk]);
    const chunkStart = link.fromClient.length - chunk.length; // where `chunk` begins in fromClient
    let holdAt = -1; // offset in `chunk` from which a new hold keeps bytes back
    let pos = 0;
    for (;;) {
      const end = respValueEnd(link.fromClient, pos);
      if (end < 0) break;
      const words = requestWords(link.fromClient, pos, end) ?? [];
      const name = (words[0] ?? '').toUpperCase();
      if (/^(P|S)?SUBSCRIBE$/.test(name) || name === 'MONITOR') link.subscribed = true;
      if (!link.subscribed) link.awaiting.push(words);
      const hold = !link.heldBytes && holdAt < 0 ? this.#holds.find((h) => !h.link && h.matches(words)) : undefined;
      if (hold) {
        hold.link = link;
        hold.words = words;
        holdAt = Math.max(0, pos - chunkStart);
        this.#heldAnswers.set(words, hold.answered);
        hold.arrived(words);
      }
      pos = end;
    }
    link.fromClient = link.fromClient.subarray(pos);
    if (link.heldBytes) { link.heldBytes.push(chunk); return; }
    if (holdAt < 0) { link.server.write(chunk); return; }
    if (holdAt > 0) link.server.write(chunk.subarray(0, holdAt));
    link.heldBytes = [Buffer.from(chunk.subarray(holdAt))];
  }

  #onReplyBytes(link: Link, chunk: Buffer): void {
    if (link.dead) return;
    if (link.subscribed) { this.#toClient(link, chunk); return; }
    link.fromServer = Buffer.concat([link.fromServer, chunk]);
    let pos = 0;
    let passed = 0; // bytes of whole replies ready to pass on
    for (;;) {
      const end = respValueEnd(link.fromServer, pos);
      if (end < 0) break;
      const isPush = link.fromServer[pos] === 0x3e; // '>': RESP3 push, no request of its own
      const request = isPush ? undefined : link.awaiting.shift();
      const held = request && this.#heldAnswers.get(request);
      if (held) { this.#heldAnswers.delete(request); held(); }
      const rule = request && this.#drops.find((r) => r.matches(request) && (!r.onlyWithData || carriesData(link.fromServer, pos)));
      if (request && rule) {
        // Pass what came before, swallow this reply and everything after it, hang, then cut.
        this.#drops.splice(this.#drops.indexOf(rule), 1);
        this.counts.droppedReplies++;
        this.dropped.push(request);
        if (passed > 0) this.#toClient(link, link.fromServer.subarray(0, passed));
        link.dead = true;
        link.fromServer = Buffer.alloc(0);
        setTimeout(() => this.#cut(link), rule.hangMs);
        return;
      }
      pos = end;
      passed = end;
    }
    if (passed > 0) this.#toClient(link, link.fromServer.subarray(0, passed));
    link.fromServer = link.fromServer.subarray(passed);
  }

  /**
   * Replies go to the client in the order the server sent them, as on any TCP connection.
   * A reply goes straight through only when none is waiting out a delay: a timer fires late
   * under load, and a reply written past a waiting one would reach the client first — the
   * client would pair each with the other's request, which no real network can cause.
   */
  #toClient(link: Link, bytes: Buffer): void {
    if (this.#delayMs <= 0 && link.delayed.length === 0) { link.client.write(bytes); return; }
    this.counts.delayedReplies++;
    const due = Math.max(link.replyDueAt, performance.now() + this.#delayMs);
    link.replyDueAt = due;
    link.delayed.push({ due, bytes: Buffer.from(bytes) });
    if (link.delayed.length === 1) this.#writeWhenDue(link);
  }

  /** Write the delayed replies that are due, oldest first; wait again for the rest. */
  #writeWhenDue(link: Link): void {
    // setTimeout truncates its delay to whole milliseconds (it may fire early): round up.
    setTimeout(() => {
      if (link.dead || !this.#links.has(link)) { link.delayed = []; return; }
      const now = performance.now();
      while (link.delayed.length > 0 && link.delayed[0]!.due <= now) link.client.write(link.delayed.shift()!.bytes);
      if (link.delayed.length > 0) this.#writeWhenDue(link);
    }, Math.max(0, Math.ceil(link.delayed[0]!.due - performance.now())));
  }
}

/** A redis-server with a FaultProxy in front, for the tests of one describe block: started
 *  in its beforeAll, stopped in its afterAll (read the fields inside the tests). */
export function proxiedServer(): { readonly server: RedisTestServer; readonly proxy: FaultProxy } {
  const env = {} as { server: RedisTestServer; proxy: FaultProxy };
  beforeAll(async () => {
    env.server = await RedisTestServer.start();
    env.proxy = await FaultProxy.start(env.server.port);
  });
  afterAll(async () => {
    await env.proxy?.close();
    await env.server?.dispose();
  });
  return env;
}
