/** Pub/sub on one machine (see bus.ts): the public names. */
export { Bus, Publisher, Subscription, type BusOptions, type PublisherOptions, type SubscribeOptions, type TopicInfo } from './bus.js';
