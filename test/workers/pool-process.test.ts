// Pool over processes: the cases in pool-cases.ts.
import t from 'tap';
import { fileTimeout } from '../helpers.js';
import { poolCases } from './pool-cases.js';

fileTimeout(t, 120, 10);
poolCases(t, 'process');
