// piscina task (bench scenario 4): a task is one event (a Uint8Array) or a batch
// ({ n, size, buf } with the events back to back, transferred); it touches the first and
// last byte of each event, as every other consumer of the scenario does, and returns how
// many events it consumed with its checksum.
let x = 0;
export default function task(t) {
  if (t instanceof Uint8Array) {
    x = (x + t[0] + t[t.length - 1]) | 0;
    return x;
  }
  const b = new Uint8Array(t.buf);
  const { n, size } = t;
  for (let k = 0; k < n; k++) x = (x + b[k * size] + b[k * size + size - 1]) | 0;
  return x;
}
