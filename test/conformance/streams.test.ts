// The conformance suite (suite.ts) for pipe: and fifo:, and any case no group names.
import { runConformance } from './suite.js';

// Seconds per case: about 4x what one case takes on an idle 2-core machine.
runConformance('streams', 60);
