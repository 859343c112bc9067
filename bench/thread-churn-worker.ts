// The worker of bench/thread-churn.ts: answers its parent's requests until the channel closes.
import { parentChannel } from '../index.js';

const conn = await parentChannel();
conn.handle((value) => value);
