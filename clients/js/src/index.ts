/**
 * ratewire-client: follow ratewire topics over one WebSocket, every update exactly once and
 * in order across reconnects and server restarts, and use the REST API with typed results
 * and errors. Works in browsers (native `WebSocket` and `fetch`) and in Node 20+ (with the
 * `ws` package when there is no global `WebSocket`).
 */

export {
  ApiError,
  AuthenticationError,
  BadRequest,
  Conflict,
  Forbidden,
  GapError,
  NotFound,
  PreconditionFailed,
  type Problem,
  RateLimited,
  RatewireError,
  ServerUnavailable,
  SubscriptionRefused,
  Unauthorized,
} from "./errors.js";
export {
  type EventKind,
  Gap,
  type HistoryPage,
  type Rating,
  Snapshot,
  type StreamItem,
  type Summary,
  SummaryState,
  Update,
  type WireRating,
} from "./models.js";
export {
  type CallOptions,
  type ClientOptions,
  type RateOptions,
  RatewireClient,
  type SubscribeOptions,
  type SummaryOptions,
  restUrlFor,
} from "./client.js";
export { ConsumedUpdate, type ConsumeOptions } from "./consumer.js";
export type { Refusal, TokenProvider } from "./stream.js";
