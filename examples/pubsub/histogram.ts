// A latency histogram for the pub/sub demo: log-linear buckets (16 per power of two, so a bucket is at most
// 1/16 wider than its lower edge) from 1 ns up to a cap; what lies above the cap is counted, never placed.
// Recording costs no allocation, so a subscriber can record every message; subscribers send their counts to
// the publisher, which merges them.

/** Sub-buckets per power of two: the relative width of a bucket is at most 1/SUB. */
const SUB = 16;
const SUB_BITS = 4;
/** Values below 2*SUB ns have a bucket each; above, bucket `b` of exponent `e` covers [(SUB+b) << (e-SUB_BITS), ...). */
const LINEAR = 2 * SUB;
/** Bucket edges go up to 2^30 ns (1.07 s); the cap must lie below it. */
const TOP_EXPONENT = 30;
const BUCKETS = LINEAR + (TOP_EXPONENT - SUB_BITS - 1) * SUB;

/** The default cap: one second. */
export const DEFAULT_CAP_NS = 1e9;

/** A percentile: the upper edge of the bucket it falls in (never flattering), or `over` when it lies above the cap. */
export type Quantile = { ns: number } | { over: number };

/** What a subscriber sends to the publisher: plain numbers, JSON-safe. */
export interface HistogramData {
  capNs: number;
  /** Non-zero buckets as [index, count] pairs (most of the ~430 buckets are empty). */
  buckets: [number, number][];
  overflow: number;
  total: number;
  maxNs: number;
}

function indexOf(ns: number): number {
  const v = Math.ceil(ns);
  if (v < LINEAR) return v < 0 ? 0 : v;
  const e = 31 - Math.clz32(v);
  return LINEAR + (e - SUB_BITS - 1) * SUB + ((v >>> (e - SUB_BITS)) & (SUB - 1));
}

/** The largest value (ns) bucket `i` holds. */
function upperEdge(i: number): number {
  if (i < LINEAR) return i;
  const e = Math.floor((i - LINEAR) / SUB) + SUB_BITS + 1;
  const b = (i - LINEAR) % SUB;
  return ((SUB + b + 1) * 2 ** (e - SUB_BITS)) - 1;
}

export class LatencyHistogram {
  readonly capNs: number;
  private readonly counts = new Float64Array(BUCKETS);
  /** Values above the cap: counted, so percentiles stay honest, but not placed. */
  overflow = 0;
  total = 0;
  /** The largest value recorded (exact), the cap included. */
  maxNs = 0;

  constructor(capNs = DEFAULT_CAP_NS) {
    if (!(capNs > 0 && capNs < 2 ** TOP_EXPONENT)) throw new RangeError(`histogram cap must be in (0, 2^${TOP_EXPONENT}) ns, got ${capNs}`);
    this.capNs = capNs;
  }

  record(ns: number): void {
    this.total++;
    if (ns > this.maxNs) this.maxNs = ns;
    if (ns > this.capNs) this.overflow++;
    else this.counts[indexOf(ns)]!++;
  }

  /** Adds another histogram's counts (same cap). */
  merge(data: HistogramData): void {
    if (data.capNs !== this.capNs) throw new RangeError(`cannot merge histograms with caps ${data.capNs} and ${this.capNs}`);
    for (const [i, n] of data.buckets) {
      if (!(Number.isInteger(i) && i >= 0 && i < BUCKETS && n >= 0)) throw new RangeError(`bad bucket [${i}, ${n}]`);
      this.counts[i]! += n;
    }
    this.overflow += data.overflow;
    this.total += data.total;
    if (data.maxNs > this.maxNs) this.maxNs = data.maxNs;
  }

  /** The value below which a fraction `p` of the recorded values lie (see Quantile); undefined when empty. */
  quantile(p: number): Quantile | undefined {
    if (this.total === 0) return undefined;
    const target = Math.max(1, Math.ceil(this.total * p));
    let seen = 0;
    for (let i = 0; i < BUCKETS; i++) {
      seen += this.counts[i]!;
      // The bucket's edge can lie above the largest value recorded; the exact maximum is the better bound.
      if (seen >= target) return { ns: Math.min(upperEdge(i), this.maxNs) };
    }
    return { over: this.capNs };
  }

  /** The largest value, or `over` when it lies above the cap (what is past the cap is not measured to print). */
  max(): Quantile | undefined {
    if (this.total === 0) return undefined;
    return this.overflow > 0 ? { over: this.capNs } : { ns: this.maxNs };
  }

  toJSON(): HistogramData {
    const buckets: [number, number][] = [];
    for (let i = 0; i < BUCKETS; i++) if (this.counts[i]) buckets.push([i, this.counts[i]!]);
    return { capNs: this.capNs, buckets, overflow: this.overflow, total: this.total, maxNs: this.maxNs };
  }

  reset(): void {
    this.counts.fill(0);
    this.overflow = this.total = this.maxNs = 0;
  }
}

/** A duration for people: 850 ns, 4.1 µs, 38 µs, 1.2 ms, 12 ms, 1.05 s. */
export function formatNs(ns: number): string {
  if (ns < 1e3) return `${Math.round(ns)} ns`;
  if (ns < 1e4) return `${(ns / 1e3).toFixed(1)} µs`;
  if (ns < 1e6) return `${Math.round(ns / 1e3)} µs`;
  if (ns < 1e7) return `${(ns / 1e6).toFixed(1)} ms`;
  if (ns < 1e9) return `${Math.round(ns / 1e6)} ms`;
  return `${(ns / 1e9).toFixed(2)} s`;
}

/** A percentile for people; one above the cap reads `> 1.00 s`, never as a measured value. */
export function formatQuantile(q: Quantile | undefined): string {
  if (q === undefined) return '-';
  return 'over' in q ? `> ${formatNs(q.over)}` : formatNs(q.ns);
}
