// The conformance cases of the message-queue transports (mq:, sysvmq:): filled in with those transports.
import type { ConformanceCase } from './harness.js';

export const queueCases: ConformanceCase[] = [];
