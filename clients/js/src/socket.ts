/**
 * One WebSocket, as a sequence of text frames to await. In browsers (and Node versions with a
 * global `WebSocket`) it is the platform's own; in Node 20 it is the `ws` package, loaded only
 * there. With `ws` the token goes in an `Authorization` header and a refused upgrade (429, 503)
 * is seen with its `Retry-After`; a browser cannot set headers, so there the token is the first
 * frame (`{"action": "auth"}`), which keeps it out of URLs and logs.
 */

import type * as WsModule from "ws";

/** The connection closed (or failed): the close code and reason, 1006 when there was none. */
export class SocketClosed extends Error {
  override name = "SocketClosed";
  constructor(
    readonly code: number,
    readonly reason: string,
  ) {
    super(`connection closed (${code}${reason ? ` ${reason}` : ""})`);
  }
}

/** The server answered the upgrade with an HTTP status instead of switching protocols. */
export class UpgradeRefused extends Error {
  override name = "UpgradeRefused";
  constructor(
    readonly status: number,
    /** Seconds, from the answer's `Retry-After`, if it had one. */
    readonly retryAfter: number | null,
  ) {
    super(`WebSocket upgrade refused with HTTP ${status}`);
  }
}

/** Frames buffered before the reader is paused (only `ws` can pause a socket). */
const HIGH_WATER = 32;
const LOW_WATER = 8;

/** An open WebSocket whose incoming text frames are awaited one by one. */
export class FrameSocket {
  #frames: string[] = [];
  #waiter: ((frame: string | SocketClosed) => void) | null = null;
  #closed: SocketClosed | null = null;
  #paused = false;

  constructor(
    private readonly sendText: (text: string) => void,
    private readonly closeSocket: (code: number, reason: string) => void,
    private readonly flow: { pause(): void; resume(): void } | null,
  ) {}

  /** Called by the transport for each text frame. */
  receive(frame: string): void {
    if (this.#waiter !== null) {
      const waiter = this.#waiter;
      this.#waiter = null;
      waiter(frame);
      return;
    }
    this.#frames.push(frame);
    if (this.flow !== null && !this.#paused && this.#frames.length >= HIGH_WATER) {
      this.#paused = true;
      this.flow.pause();
    }
  }

  /** Called by the transport once, when the connection is gone. */
  ended(code: number, reason: string): void {
    if (this.#closed !== null) return;
    this.#closed = new SocketClosed(code, reason);
    if (this.#waiter !== null) {
      const waiter = this.#waiter;
      this.#waiter = null;
      waiter(this.#closed);
    }
  }

  /** The next text frame; rejects with {@link SocketClosed} once the frames run out. */
  async next(): Promise<string> {
    const buffered = this.#frames.shift();
    if (buffered !== undefined) {
      if (this.#paused && this.#frames.length <= LOW_WATER) {
        this.#paused = false;
        this.flow?.resume();
      }
      return buffered;
    }
    if (this.#closed !== null) throw this.#closed;
    const frame = await new Promise<string | SocketClosed>((resolve) => {
      this.#waiter = resolve;
    });
    if (frame instanceof SocketClosed) throw frame;
    return frame;
  }

  /** Send a JSON message (dropped if the socket is closing: the next session resends). */
  send(message: unknown): void {
    if (this.#closed === null) this.sendText(JSON.stringify(message));
  }

  close(code = 1000, reason = ""): void {
    this.closeSocket(code, reason);
    this.ended(code, reason);
  }
}

type WsConstructor = typeof WsModule.WebSocket;
let wsPackage: Promise<WsConstructor> | undefined;

/** The `ws` package's WebSocket, imported on first use (Node without a global WebSocket). */
function loadWs(): Promise<WsConstructor> {
  // A computed specifier keeps bundlers from pulling `ws` into browser builds.
  const specifier = "ws";
  wsPackage ??= (import(/* @vite-ignore */ specifier) as Promise<typeof WsModule>).then(
    (module) => module.WebSocket ?? (module as unknown as { default: WsConstructor }).default,
    (error: unknown) => {
      wsPackage = undefined;
      throw new Error(
        `ratewire-client: this runtime has no global WebSocket; install the "ws" package (${String(error)})`,
      );
    },
  );
  return wsPackage;
}

/**
 * The WebSocket subprotocol offered (`Sec-WebSocket-Protocol`): ratewire selects it, and
 * proxies may route on it. The token still travels in the first frame (or a header).
 */
export const SUBPROTOCOL = "ratewire.v1";

/** Options of {@link openSocket}. */
export interface OpenOptions {
  token: string;
  timeoutMs: number;
  signal: AbortSignal;
}

/**
 * Connect and authenticate. Resolves once the upgrade succeeded (the first frame, the
 * server's `connection_success` or its close, is for the caller to read); rejects with
 * {@link UpgradeRefused}, {@link SocketClosed} (could not connect) or the signal's reason.
 */
export function openSocket(url: string, options: OpenOptions): Promise<FrameSocket> {
  const Native = (globalThis as { WebSocket?: typeof WebSocket }).WebSocket;
  if (Native !== undefined) return openNative(Native, url, options);
  return loadWs().then((Ws) => openWs(Ws, url, options));
}

function settleOnce<T>(
  options: OpenOptions,
  start: (resolve: (value: T) => void, reject: (error: unknown) => void) => () => void,
): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    let done = false;
    let abandon = (): void => {};
    const finish = (): boolean => {
      if (done) return false;
      done = true;
      clearTimeout(timer);
      options.signal.removeEventListener("abort", onAbort);
      return true;
    };
    const timer = setTimeout(() => {
      if (finish()) {
        abandon();
        reject(new SocketClosed(1006, `no answer in ${options.timeoutMs} ms`));
      }
    }, options.timeoutMs);
    const onAbort = (): void => {
      if (finish()) {
        abandon();
        reject(options.signal.reason);
      }
    };
    options.signal.addEventListener("abort", onAbort, { once: true });
    abandon = start(
      (value) => {
        if (finish()) resolve(value);
      },
      (error) => {
        if (finish()) reject(error);
      },
    );
    if (options.signal.aborted) onAbort();
  });
}

function openNative(
  Native: typeof WebSocket,
  url: string,
  options: OpenOptions,
): Promise<FrameSocket> {
  return settleOnce(options, (resolve, reject) => {
    const ws = new Native(url, [SUBPROTOCOL]);
    const socket = new FrameSocket(
      (text) => ws.send(text),
      (code, reason) => ws.close(code, reason),
      null,
    );
    ws.addEventListener("message", (event: MessageEvent) => {
      if (typeof event.data === "string") socket.receive(event.data);
    });
    ws.addEventListener("close", (event: CloseEvent) => {
      socket.ended(event.code, event.reason);
      reject(new SocketClosed(event.code, event.reason));
    });
    ws.addEventListener("open", () => {
      ws.send(JSON.stringify({ action: "auth", token: options.token }));
      resolve(socket);
    });
    return () => ws.close();
  });
}

function openWs(Ws: WsConstructor, url: string, options: OpenOptions): Promise<FrameSocket> {
  return settleOnce(options, (resolve, reject) => {
    const ws = new Ws(url, [SUBPROTOCOL], {
      headers: { Authorization: `Bearer ${options.token}` },
      perMessageDeflate: false,
      followRedirects: false,
    });
    const socket = new FrameSocket(
      (text) => ws.send(text),
      (code, reason) => ws.close(code, reason),
      { pause: () => ws.pause(), resume: () => ws.resume() },
    );
    ws.on("error", () => {}); // every failure also arrives as "close" or "unexpected-response"
    ws.on("unexpected-response", (request, response) => {
      const header = response.headers["retry-after"];
      const seconds = header === undefined ? Number.NaN : Number(header);
      reject(new UpgradeRefused(response.statusCode ?? 0, Number.isFinite(seconds) ? seconds : null));
      response.resume();
      request.destroy();
      ws.terminate();
    });
    ws.on("message", (data, isBinary) => {
      if (!isBinary) socket.receive(data.toString());
    });
    ws.on("close", (code, reason) => {
      socket.ended(code, reason.toString());
      reject(new SocketClosed(code, reason.toString()));
    });
    ws.on("open", () => resolve(socket));
    return () => ws.terminate();
  });
}
