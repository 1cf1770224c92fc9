/**
 * Every error the client throws is a {@link RatewireError}. REST answers with an error status
 * become a typed {@link ApiError} subclass built from the problem+json body.
 */

import type { Gap } from "./models.js";

/** Base of every error the client throws. */
export class RatewireError extends Error {
  override name = "RatewireError";
}

/** The problem+json body of an error answer (RFC 9457), as far as the client reads it. */
export interface Problem {
  type?: string;
  title?: string;
  status?: number;
  detail?: string;
  [key: string]: unknown;
}

/** A REST request answered with an error: `status`, `title`, `detail` and the `body` as sent. */
export class ApiError extends RatewireError {
  override name = "ApiError";
  readonly title: string;
  readonly detail: string;

  constructor(
    readonly status: number,
    readonly body: Problem,
    readonly method: string,
    readonly path: string,
  ) {
    const title = String(body.title ?? "");
    const detail = String(body.detail ?? "");
    super(`${method} ${path}: ${status} ${title}${detail ? `: ${detail}` : ""}`);
    this.title = title;
    this.detail = detail;
  }
}

/** 400 or 422: the request was invalid (`body.errors` says where, for 422). */
export class BadRequest extends ApiError {
  override name = "BadRequest";
}
/** 401: no token, or a bad, expired or revoked one. */
export class Unauthorized extends ApiError {
  override name = "Unauthorized";
}
/** 403: the token may not do this (another user's rating, say). */
export class Forbidden extends ApiError {
  override name = "Forbidden";
}
/** 404: no such rating. */
export class NotFound extends ApiError {
  override name = "NotFound";
}
/** 409: the user rated this game already (`create`; `rate` replaces instead). */
export class Conflict extends ApiError {
  override name = "Conflict";
}
/** 412: `If-Match` named a version that is no longer current. */
export class PreconditionFailed extends ApiError {
  override name = "PreconditionFailed";
}
/** 429: over the REST rate limit; retry after `retryAfter` seconds. */
export class RateLimited extends ApiError {
  override name = "RateLimited";
  constructor(
    status: number,
    body: Problem,
    method: string,
    path: string,
    readonly retryAfter: number,
  ) {
    super(status, body, method, path);
  }
}
/** 503 (storage unreachable, at capacity) or another 5xx: retry later. */
export class ServerUnavailable extends ApiError {
  override name = "ServerUnavailable";
}

/**
 * The stream's token was refused (close 4001) or expired (4002) and no `tokenProvider` can
 * supply a new one.
 */
export class AuthenticationError extends RatewireError {
  override name = "AuthenticationError";
  constructor(
    readonly code: number,
    readonly reason: string,
  ) {
    super(`${reason} (close ${code}); pass tokenProvider to renew tokens`);
  }
}

/** The server refused a subscription for good (a forbidden or unknown topic, a bad URL). */
export class SubscriptionRefused extends RatewireError {
  override name = "SubscriptionRefused";
}

/** Thrown instead of yielding a {@link Gap} when a subscription has `onGap: "throw"`. */
export class GapError extends RatewireError {
  override name = "GapError";
  constructor(readonly gap: Gap) {
    super(
      `${gap.topic}: history no longer reaches offset ${gap.after}; resumed at ${gap.offset}`,
    );
  }
}

const ERRORS: Record<number, typeof ApiError> = {
  400: BadRequest,
  401: Unauthorized,
  403: Forbidden,
  404: NotFound,
  409: Conflict,
  412: PreconditionFailed,
  422: BadRequest,
};

/** The typed error of an error answer. */
export function apiError(
  status: number,
  body: Problem,
  method: string,
  path: string,
  retryAfter: string | null,
): ApiError {
  if (status === 429) {
    const seconds = Number(retryAfter);
    return new RateLimited(status, body, method, path, Number.isFinite(seconds) ? seconds : 1);
  }
  if (status >= 500) return new ServerUnavailable(status, body, method, path);
  const kind = ERRORS[status] ?? ApiError;
  return new kind(status, body, method, path);
}
