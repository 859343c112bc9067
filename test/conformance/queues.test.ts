// The conformance suite (suite.ts) for mq: and sysvmq: (they share the user's RLIMIT_MSGQUEUE with test/mq.test.ts: see .taprc).
import { runConformance } from './suite.js';

// Seconds per case: 4x what one case took on a busy 2-core machine (load 10-20, 50 s).
runConformance('queues', 200);
