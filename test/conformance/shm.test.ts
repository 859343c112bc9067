// The conformance suite (suite.ts) for shm:// (the reference implementation).
import { runConformance } from './suite.js';

// Seconds per case: about 4x what one case takes on an idle 2-core machine.
runConformance('shm', 60);
