// The page's live view: what `npm start` shows in a terminal, drawn here. A load generator
// ramps the event rate up and down, consumers take the events (Web Workers over the shared
// memory, or poll() on this thread in the single-thread fallback), and the manager's own
// scaling loop (start()) adds shards while rings fill and drains them when they idle. Every
// SAMPLE_MS the page reads stats() and redraws the events/s chart, each shard's fill and share
// of the traffic, and the scaling decisions.
import { ShardManager } from 'shard-mapper';
import { targetRate } from '../demo-shared.mjs'; // the load profile of `npm start`

const SAMPLE_MS = 250;
const HISTORY = 160; // samples on the chart: 40 s
const MAX_SHARDS = 4;
const PUSH_EVERY_MS = 10;
const FALLBACK_CONSUMER_RATE = 40_000; // events/s one shard's poll() loop takes in the fallback
const COLOURS = { pushed: '#1d4ed8', delivered: '#c2410c', target: '#6b7280', shards: '#15803d' };

const fmt = (n) => Math.round(n).toLocaleString('en-US');
const short = (n) => (n >= 1e6 ? `${+(n / 1e6).toFixed(1)}M` : n >= 1e3 ? `${+(n / 1e3).toFixed(0)}k` : `${Math.round(n)}`);
const el = (id) => document.getElementById(id);

export async function startDashboard({ shared }) {
  const params = new URLSearchParams(location.search);
  const peak = Number(params.get('peak')) || 150_000;
  const periodS = Number(params.get('period')) || 40;
  el('live').hidden = false;
  el('live-mode').textContent = shared
    ? `${MAX_SHARDS} consumer Web Workers read the rings in the shared WebAssembly memory (each batch waits 2 ms, like a downstream write).`
    : `single-thread fallback: this page consumes with poll(), about ${fmt(FALLBACK_CONSUMER_RATE)} events/s per shard.`;

  const started = performance.now();
  const elapsed = () => (performance.now() - started) / 1000;
  const decisions = []; // { at (s), sample index, kind, count }
  const history = { pushed: [], delivered: [], target: [], shards: [], marks: [] };
  let sampleIndex = 0;

  const manager = await ShardManager.create({
    initialShards: 1,
    ringBufferCapacity: 16384,
    maxPayloadBytes: 64,
    backpressure: { kind: 'dropNewest' }, // a full ring sheds load; the loop scales out instead
    policy: {
      minShards: 1, maxShards: MAX_SHARDS, fillRatioThreshold: 0.5, cooldownMs: 1500, scaleDownDelayMs: 3000, metricsWindowMs: 250,
      flushLatencyThresholdUs: 50_000, // the consumers' 2 ms wait per batch is not overload: ring fill decides
    },
    ...(shared ? {
      consumer: {
        worker: () => new Worker(new URL('./dashboard.worker.js', import.meta.url), { type: 'module' }),
        threads: MAX_SHARDS,
        batchSize: 64,
      },
    } : {}),
    onEvent: (e) => {
      if (e.type === 'scalingDecision') decisions.push({ at: elapsed(), index: sampleIndex, ...e.decision });
    },
  });
  manager.start();

  // Load: PUSH_EVERY_MS, push what the target rate owes since the last round.
  const payload = new Uint8Array(32).fill(0x61);
  let owed = 0;
  let seq = 0;
  let lastPush = performance.now();
  const target = () => targetRate((elapsed() % periodS) / periodS, peak, Math.min(2_000, peak / 10));
  setInterval(() => {
    const now = performance.now();
    owed += (target() * (now - lastPush)) / 1000;
    lastPush = now;
    const n = Math.min(Math.floor(owed), peak); // never more than a second's worth after a stall
    owed -= n;
    for (let i = 0; i < n; i++) manager.push(Math.imul(seq++, 0x9e3779b1) >>> 0, payload);
  }, PUSH_EVERY_MS);

  // The fallback's consumer: poll each shard at a fixed rate on this thread.
  if (!shared) {
    let lastPoll = performance.now();
    setInterval(() => {
      const now = performance.now();
      const budget = Math.max(1, Math.round((FALLBACK_CONSUMER_RATE * (now - lastPoll)) / 1000));
      lastPoll = now;
      for (const id of manager.mapper.allShardIds()) manager.poll(id, budget);
    }, 20);
  }

  let last = { at: performance.now(), pushed: 0, delivered: 0, perShard: new Map() };
  setInterval(() => {
    const now = performance.now();
    const s = manager.stats();
    const dt = (now - last.at) / 1000;
    const rates = { pushed: (s.pushed - last.pushed) / dt, delivered: (s.delivered - last.delivered) / dt };
    const perShard = new Map(s.shards.map((sh) => [sh.id, sh.pushed]));
    const shares = new Map(s.shards.map((sh) => [sh.id, sh.pushed - (last.perShard.get(sh.id) ?? 0)]));
    last = { at: now, pushed: s.pushed, delivered: s.delivered, perShard };
    const active = manager.mapper.activeShardCount();
    const point = { pushed: rates.pushed, delivered: rates.delivered, target: target(), shards: active };
    for (const [k, v] of Object.entries(point)) {
      history[k].push(v);
      if (history[k].length > HISTORY) history[k].shift();
    }
    sampleIndex++;
    renderSummary(s, rates, active);
    renderShards(manager, s, shares);
    renderDecisions(decisions);
    drawChart(el('chart'), history, decisions, sampleIndex);
  }, SAMPLE_MS);

  function renderSummary(s, rates, active) {
    el('tile-target').textContent = fmt(target());
    el('tile-pushed').textContent = fmt(rates.pushed);
    el('tile-delivered').textContent = fmt(rates.delivered);
    el('tile-shards').textContent = `${active} / ${MAX_SHARDS}`;
    el('tile-dropped').textContent = fmt(s.dropped);
    el('tile-inflight').textContent = fmt(s.inFlight);
  }
}

function bar(ratio, colour) {
  const pct = Math.max(0, Math.min(1, ratio)) * 100;
  return `<span class="bar"><span style="width:${pct.toFixed(1)}%;background:${colour}"></span></span>`;
}

function renderShards(manager, s, shares) {
  const total = [...shares.values()].reduce((a, b) => a + b, 0);
  const rows = s.shards.map((sh) => {
    const fill = Math.max(sh.length / manager.ringCapacity, sh.bytes / manager.ringBufferBytes); // by records or by bytes
    const share = total > 0 ? (shares.get(sh.id) ?? 0) / total : 0;
    const fillColour = fill > 0.5 ? '#b91c1c' : fill > 0.2 ? '#ca8a04' : '#15803d';
    return `<tr>
      <td>${sh.id}</td><td><span class="state ${sh.state}">${sh.state}</span></td>
      <td>${bar(fill, fillColour)} <span class="num">${(fill * 100).toFixed(0)}%</span></td>
      <td>${bar(share, COLOURS.pushed)} <span class="num">${(share * 100).toFixed(0)}%</span></td>
      <td class="num">${fmt(sh.length)}</td><td class="num">${fmt(sh.delivered)}</td>
    </tr>`;
  });
  el('shards').innerHTML = rows.join('');
}

function renderDecisions(decisions) {
  const recent = decisions.slice(-6).reverse();
  el('decisions').innerHTML = recent.length === 0
    ? '<li>none yet: the loop waits until a ring is over half full</li>'
    : recent.map((d) => `<li><b>${d.at.toFixed(1)} s</b> ${d.kind === 'scaleUp' ? '▲ scale up' : '▼ scale down'} by ${d.count}</li>`).join('');
}

/** Events/s (left axis) and active shards (right axis) over the last HISTORY samples. */
function drawChart(canvas, history, decisions, sampleIndex) {
  const dpr = window.devicePixelRatio || 1;
  const width = canvas.clientWidth;
  const height = canvas.clientHeight;
  if (canvas.width !== Math.round(width * dpr)) canvas.width = Math.round(width * dpr);
  if (canvas.height !== Math.round(height * dpr)) canvas.height = Math.round(height * dpr);
  const g = canvas.getContext('2d');
  g.setTransform(dpr, 0, 0, dpr, 0, 0);
  g.clearRect(0, 0, width, height);
  const box = { left: 58, right: width - 40, top: 34, bottom: height - 26 };
  const n = history.pushed.length;
  const highest = Math.max(1_000, ...history.pushed, ...history.delivered, ...history.target);
  const step = 10 ** Math.floor(Math.log10(highest));
  const yMax = Math.ceil((highest * 1.1) / step) * step;
  const x = (i) => box.left + ((i + HISTORY - n) / (HISTORY - 1)) * (box.right - box.left);
  const y = (v) => box.bottom - (v / yMax) * (box.bottom - box.top);
  const yShards = (v) => box.bottom - (v / MAX_SHARDS) * (box.bottom - box.top);

  g.font = '12px system-ui, sans-serif';
  g.lineWidth = 1;
  // Grid and axes.
  g.strokeStyle = '#e5e7eb';
  g.fillStyle = '#374151';
  g.textAlign = 'right';
  g.textBaseline = 'middle';
  for (let k = 0; k <= 4; k++) {
    const v = (yMax * k) / 4;
    g.beginPath(); g.moveTo(box.left, y(v)); g.lineTo(box.right, y(v)); g.stroke();
    g.fillText(short(v), box.left - 6, y(v));
  }
  g.textAlign = 'left';
  g.fillStyle = COLOURS.shards;
  for (let k = 0; k <= MAX_SHARDS; k++) g.fillText(String(k), box.right + 6, yShards(k));
  g.textAlign = 'center';
  g.textBaseline = 'top';
  g.fillStyle = '#374151';
  for (let s = 0; s <= HISTORY * SAMPLE_MS / 1000; s += 10) {
    const i = HISTORY - 1 - (s * 1000) / SAMPLE_MS;
    g.fillText(s === 0 ? 'now' : `−${s} s`, box.left + (i / (HISTORY - 1)) * (box.right - box.left), box.bottom + 6);
  }

  // Active shards: a shaded step area on the right axis.
  if (n > 0) {
    g.beginPath();
    g.moveTo(x(0), box.bottom);
    for (let i = 0; i < n; i++) { g.lineTo(x(i), yShards(history.shards[i])); g.lineTo(x(i + 1 < n ? i + 1 : i), yShards(history.shards[i])); }
    g.lineTo(x(n - 1), box.bottom);
    g.closePath();
    g.fillStyle = 'rgba(21, 128, 61, 0.10)';
    g.fill();
  }
  // Scaling decisions: a vertical line with ▲/▼ where each happened.
  g.textBaseline = 'bottom';
  for (const d of decisions) {
    const i = d.index - (sampleIndex - n);
    if (i < 0 || i >= n) continue;
    g.strokeStyle = COLOURS.shards;
    g.setLineDash([2, 3]);
    g.beginPath(); g.moveTo(x(i), box.top); g.lineTo(x(i), box.bottom); g.stroke();
    g.setLineDash([]);
    g.fillStyle = COLOURS.shards;
    g.fillText(d.kind === 'scaleUp' ? `▲${d.count}` : `▼${d.count}`, x(i), box.top - 1);
  }
  // The three series: each has its own dash pattern, so they read apart without colour too.
  const series = [
    ['target', [1, 3], 1.5], ['pushed', [], 2], ['delivered', [7, 4], 2.5], // dashed on top: both stay visible
  ];
  for (const [name, dash, lineWidth] of series) {
    g.strokeStyle = COLOURS[name];
    g.lineWidth = lineWidth;
    g.setLineDash(dash);
    g.beginPath();
    history[name].forEach((v, i) => (i === 0 ? g.moveTo(x(i), y(v)) : g.lineTo(x(i), y(v))));
    g.stroke();
  }
  g.setLineDash([]);
  g.lineWidth = 1;
  g.strokeStyle = '#9ca3af';
  g.strokeRect(box.left, box.top, box.right - box.left, box.bottom - box.top);
}
