// The fault proxy itself (test/helpers/fault-proxy.ts): whatever it delays, it passes replies
// on in the order the server sent them, as TCP does. A proxy that let a reply overtake an
// earlier, delayed one made its clients pair each reply with the other's request; the
// Jepsen-style runs then saw an XADD "succeed" with an HMGET's answer and reported the lost
// frame as the package's loss. Raw sockets (no client library between): each request is an
// ECHO of a counter, so a reply names the request it belongs to.
import { describe, expect, it } from 'vitest';
import { connect, type Socket } from 'node:net';
import { proxiedServer } from './helpers/fault-proxy.js';
import { HOST, redisAvailable } from './helpers/redis-server.js';
import { prng } from './helpers/index.js';

const available = redisAvailable();

/** Block the event loop (so timers fall due while I/O waits), as a loaded machine does. */
function stall(ms: number): void {
  const end = performance.now() + ms;
  while (performance.now() < end) { /* busy */ }
}

const echo = (text: string) => `*2\r\n$4\r\nECHO\r\n$${text.length}\r\n${text}\r\n`;

describe.skipIf(!available)('the fault proxy keeps replies in order', () => {
  const env = proxiedServer();

  it('delays switched on and off while the event loop stalls: every connection gets its replies in request order', async () => {
    const rng = prng(20261205);
    const connections = 3;
    const perConnection = 400;
    const sockets: Socket[] = [];
    const received: string[][] = [];
    const sent: number[] = new Array(connections).fill(0);
    for (let c = 0; c < connections; c++) {
      const socket = connect(env.proxy.port, HOST);
      await new Promise<void>((r) => socket.once('connect', () => r()));
      socket.setNoDelay(true);
      const got: string[] = [];
      received.push(got);
      let pending = '';
      socket.on('data', (chunk: Buffer) => {
        pending += chunk.toString('latin1');
        for (let m = /^\$(\d+)\r\n/.exec(pending); m; m = /^\$(\d+)\r\n/.exec(pending)) {
          const start = m[0].length;
          const len = Number(m[1]);
          if (pending.length < start + len + 2) break;
          got.push(pending.slice(start, start + len));
          pending = pending.slice(start + len + 2);
        }
        // Stall inside an I/O callback: replies arriving meanwhile are read in the same
        // poll phase, before the timers that fell due during the stall run.
        if (rng() < 0.3) stall(Math.floor(rng() * 6));
      });
      sockets.push(socket);
    }
    const delaysBefore = env.proxy.counts.delayedReplies;
    for (let step = 0; step < perConnection; step++) {
      if (rng() < 0.2) env.proxy.delayReplies(rng() < 0.5 ? 0 : 1 + Math.floor(rng() * 8));
      for (let c = 0; c < connections; c++) {
        const n = 1 + Math.floor(rng() * 3);
        let batch = '';
        for (let k = 0; k < n && sent[c]! < perConnection; k++) batch += echo(`${c}:${sent[c]!++}`);
        if (batch) sockets[c]!.write(batch);
      }
      await new Promise((r) => setTimeout(r, rng() < 0.5 ? 0 : 1));
      if (rng() < 0.2) stall(Math.floor(rng() * 5));
    }
    env.proxy.delayReplies(0);
    const deadline = performance.now() + 10_000;
    while (received.some((g, c) => g.length < sent[c]!) && performance.now() < deadline) await new Promise((r) => setTimeout(r, 10));
    await new Promise((r) => setTimeout(r, 100)); // a late extra reply would show here
    for (const s of sockets) s.destroy();
    expect(env.proxy.counts.delayedReplies - delaysBefore, 'replies were delayed (the fault hit)').toBeGreaterThan(100);
    for (let c = 0; c < connections; c++) {
      expect(received[c], `connection ${c}`).toEqual(Array.from({ length: sent[c]! }, (_, i) => `${c}:${i}`));
    }
  });
});
