// The task of examples/workers/main.ts: CPU-bound work, a chain of SHA-256 hashes. A plain default export, so
// the same file is a Piscina task module too.
import { createHash } from 'node:crypto';

export interface HashJob {
  /** Where the chain starts. */
  seed: string;
  /** How many times to hash. */
  rounds: number;
}

/** Hashes `seed` `rounds` times over (each round hashes the previous digest) and returns the last digest in hex. */
export default function hashChain(job: HashJob): string {
  let digest: Buffer = Buffer.from(job.seed);
  for (let i = 0; i < job.rounds; i++) digest = createHash('sha256').update(digest).digest();
  return digest.toString('hex');
}
