// The conformance suite (suite.ts) for mq: and sysvmq: (they share the user's RLIMIT_MSGQUEUE with test/mq.test.ts: see .taprc).
import { runConformance } from './suite.js';

// Seconds per case: about 4x what one case takes on an idle 2-core machine.
runConformance('queues', 90);
