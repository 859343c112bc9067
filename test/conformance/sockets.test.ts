// The conformance suite (suite.ts) for unix, unix-abstract and tcp.
import { runConformance } from './suite.js';

// Seconds per case: about 4x what one case takes on an idle 2-core machine.
runConformance('sockets', 60);
