/** Pub/sub on one machine (see bus.ts): the public names. */
export { Bus, type TopicInfo } from './bus.js';
export { Publisher, type PublisherOptions } from './publisher.js';
export { Subscription, type SubscribeOptions, type PollHandler } from './subscription.js';
export type { BusOptions } from './naming.js';
