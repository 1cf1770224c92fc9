// Real ratewire processes, tokens and a cuttable TCP proxy for the client's tests.
import { spawn } from "node:child_process";
import { createHmac } from "node:crypto";
import { mkdtempSync, openSync, readFileSync, rmSync } from "node:fs";
import net from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const repo = path.resolve(here, "..", "..", "..");
/** The Python that runs ratewire: RATEWIRE_PYTHON (the test suite sets it), else the repo's venv. */
export const PYTHON = process.env.RATEWIRE_PYTHON ?? path.join(repo, ".venv", "bin", "python");
export const SECRET = "js-client-secret-0123456789abcdef0123456789abcdef";

/** A free loopback port. */
export function freePort() {
  return new Promise((resolve, reject) => {
    const probe = net.createServer();
    probe.once("error", reject);
    probe.listen(0, "127.0.0.1", () => {
      const { port } = probe.address();
      probe.close(() => resolve(port));
    });
  });
}

const b64url = (value) => Buffer.from(value).toString("base64url");

/** An HS256 JWT signed with the servers' key; `ttl` seconds (negative: already expired). */
export function token(sub, { scope, ttl = 600 } = {}) {
  const now = Math.floor(Date.now() / 1000);
  const claims = { sub, iat: now, exp: now + ttl, jti: `js-${sub}-${now}-${Math.random()}` };
  if (scope) claims.scope = scope;
  const unsigned = `${b64url(JSON.stringify({ alg: "HS256", typ: "JWT" }))}.${b64url(JSON.stringify(claims))}`;
  const signature = createHmac("sha256", SECRET).update(unsigned).digest("base64url");
  return `${unsigned}.${signature}`;
}

/** One `ratewire serve` on free ports and its own SQLite database; restartable on both. */
export class Server {
  static async start(env = {}) {
    const server = new Server(await freePort(), await freePort(), env);
    await server.start();
    return server;
  }

  constructor(httpPort, wsPort, env) {
    this.httpPort = httpPort;
    this.wsPort = wsPort;
    this.dir = mkdtempSync(path.join(tmpdir(), "ratewire-js-"));
    this.env = {
      ...process.env,
      RATEWIRE_SERVER__HOST: "127.0.0.1",
      RATEWIRE_SERVER__PORT: String(httpPort),
      RATEWIRE_MODULES__WEBSOCKET__PORT: String(wsPort),
      RATEWIRE_STORAGE__BACKEND: "sqlite",
      RATEWIRE_STORAGE__URL: `sqlite:///${path.join(this.dir, "ratewire.db")}`,
      RATEWIRE_JWT__SECRET: SECRET,
      // Tests connect often from 127.0.0.1: lifted here, the 429 test lowers one again.
      RATEWIRE_LIMITS__REST_REQUESTS_PER_CLIENT_PER_MINUTE: "1000000",
      RATEWIRE_LIMITS__WS_CONNECTIONS_PER_IP_PER_SECOND: "1000",
      RATEWIRE_LIMITS__WS_CONNECTIONS_PER_IP: "100000",
      RATEWIRE_LIMITS__WS_CONNECTIONS_PER_USER: "100000",
      ...env,
    };
    this.process = null;
  }

  get baseUrl() {
    return `http://127.0.0.1:${this.httpPort}`;
  }
  get wsUrl() {
    return `ws://127.0.0.1:${this.httpPort}/ws`;
  }
  get moduleUrl() {
    return `ws://127.0.0.1:${this.wsPort}/`;
  }

  async start() {
    const log = openSync(path.join(this.dir, "server.log"), "a");
    this.process = spawn(PYTHON, ["-m", "ratewire", "serve", "--log-level", "WARNING"], {
      cwd: this.dir,
      env: this.env,
      stdio: ["ignore", log, log],
    });
    const exited = new Promise((resolve) => this.process.once("exit", resolve));
    const deadline = Date.now() + 30_000;
    while (Date.now() < deadline) {
      if (this.process.exitCode !== null) break;
      if ((await this.#healthy()) && (await reachable(this.wsPort))) return;
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    this.process.kill("SIGKILL");
    await exited;
    throw new Error(`ratewire serve did not start:\n${this.log().slice(-3000)}`);
  }

  async #healthy() {
    try {
      const answer = await fetch(`${this.baseUrl}/healthz`, { signal: AbortSignal.timeout(500) });
      return answer.status === 200;
    } catch {
      return false;
    }
  }

  log() {
    return readFileSync(path.join(this.dir, "server.log"), "utf8");
  }

  /** SIGTERM: a graceful shutdown (connections are closed with 1001). */
  async terminate() {
    if (this.process === null || this.process.exitCode !== null) return;
    const exited = new Promise((resolve) => this.process.once("exit", resolve));
    this.process.kill("SIGTERM");
    await exited;
  }

  /** SIGKILL: no goodbye to anyone. */
  async kill() {
    if (this.process === null || this.process.exitCode !== null) return;
    const exited = new Promise((resolve) => this.process.once("exit", resolve));
    this.process.kill("SIGKILL");
    await exited;
  }

  async stop() {
    await this.kill();
    rmSync(this.dir, { recursive: true, force: true });
  }

  /** A REST write as user `user`; fails the test on an error answer. */
  async rate(game, user, score, comment = null) {
    const answer = await fetch(`${this.baseUrl}/games/${game}/ratings/${user}`, {
      method: "PUT",
      headers: { Authorization: `Bearer ${token(user)}`, "Content-Type": "application/json" },
      body: JSON.stringify({ score, comment }),
    });
    if (answer.status !== 200 && answer.status !== 201) {
      throw new Error(`PUT ${game}/${user}: ${answer.status} ${await answer.text()}`);
    }
    return answer.json();
  }
}

function reachable(port) {
  return new Promise((resolve) => {
    const socket = net.connect(port, "127.0.0.1");
    socket.once("connect", () => {
      socket.destroy();
      resolve(true);
    });
    socket.once("error", () => resolve(false));
  });
}

/** A TCP proxy to a port whose traffic can be cut (every connection reset, new ones refused). */
export class Proxy {
  static async start(targetPort) {
    const proxy = new Proxy(targetPort);
    await new Promise((resolve) => proxy.server.listen(0, "127.0.0.1", resolve));
    proxy.port = proxy.server.address().port;
    return proxy;
  }

  constructor(targetPort) {
    this.targetPort = targetPort;
    this.isCut = false;
    this.sockets = new Set();
    this.server = net.createServer((client) => {
      if (this.isCut) {
        client.resetAndDestroy();
        return;
      }
      const upstream = net.connect(this.targetPort, "127.0.0.1");
      for (const socket of [client, upstream]) {
        this.sockets.add(socket);
        socket.on("error", () => {});
        socket.on("close", () => {
          this.sockets.delete(socket);
          client.destroy();
          upstream.destroy();
        });
      }
      client.pipe(upstream);
      upstream.pipe(client);
    });
  }

  /** Reset every connection through the proxy, and refuse new ones until `restore()`. */
  cut() {
    this.isCut = true;
    for (const socket of this.sockets) socket.resetAndDestroy();
  }

  restore() {
    this.isCut = false;
  }

  close() {
    this.cut();
    return new Promise((resolve) => this.server.close(resolve));
  }
}

/** Take `count` items from an async iterator, failing after `ms`. */
export async function take(iterator, count, ms = 20_000) {
  const items = [];
  const timer = setTimeout(() => {}, ms);
  try {
    while (items.length < count) {
      const next = await Promise.race([
        iterator.next(),
        new Promise((_, reject) =>
          setTimeout(
            () => reject(new Error(`timed out after ${items.length} of ${count} items`)),
            ms,
          ).unref(),
        ),
      ]);
      if (next.done) break;
      items.push(next.value);
    }
  } finally {
    clearTimeout(timer);
  }
  return items;
}
