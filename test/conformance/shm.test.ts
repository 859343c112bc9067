// The conformance suite (suite.ts) for shm:// (the reference implementation).
import { runConformance } from './suite.js';

// Seconds per case: 4x what one case took on a busy 2-core machine (load 10-20, 40 s).
runConformance('shm', 160);
