#!/usr/bin/env node
// guide_server.js - baseline peer for the ratewire benchmarks.
//
// WHAT IT MODELS
//   The server of the public guide "Real-Time Rating Updates with OpenClaw:
//   A WebSocket Streaming Guide", rewritten from its description, with the same
//   shape and the same weaknesses:
//     * a `ws` WebSocket server on its own port (default 8091 here), JWT (HS256)
//       read from the `?token=` query string; a bad token gets the upgrade
//       accepted and then closed with 4001 "Invalid token";
//     * each socket keeps ONE subscribed topic (a new subscribe replaces it);
//     * a plain HTTP server (POST /ratings) whose handler broadcasts by looping
//       over ALL connected clients and JSON.stringify-ing the message again for
//       every matching client, and answers the POST once the broadcast is done;
//     * no history, no resume, no backpressure, no rate limits, memory only.
//   Offsets are counted per topic (1, 2, 3, ...) and the epoch is the constant
//   "node", so its frames follow the ratewire wire contract (docs/protocol.md,
//   protocol 1) closely enough that the same clients and benchmark harness
//   can drive it.
//
// WHY IT EXISTS
//   It is the "before" in our benchmarks: the numbers of ratewire are compared
//   with this naive design. It is NOT a product; keep it small and do not fix
//   its design flaws, they are what is being measured.
//
// USAGE
//   npm ci --no-audit --no-fund
//   node guide_server.js [--port 8091] [--http-port 8090] [--secret S] [--host 127.0.0.1]
//   (env: GUIDE_WS_PORT, GUIDE_HTTP_PORT, GUIDE_SECRET, GUIDE_HOST)
//   Prints "READY <wsport> <httpport>" on stdout once both servers listen
//   (port 0 picks a free port; the READY line then gives the real one).

'use strict';

const crypto = require('crypto');
const http = require('http');
const { WebSocketServer, WebSocket } = require('ws');
const jwt = require('jsonwebtoken');

// ---- configuration --------------------------------------------------------

function parseArgs(argv) {
  const opts = {
    port: Number(process.env.GUIDE_WS_PORT || 8091),
    httpPort: Number(process.env.GUIDE_HTTP_PORT || 8090),
    secret: process.env.GUIDE_SECRET || 'YOUR_SUPER_SECRET',
    host: process.env.GUIDE_HOST || '127.0.0.1',
  };
  for (let i = 0; i < argv.length; i++) {
    const key = argv[i];
    const value = argv[i + 1];
    if (value === undefined) throw new Error(`missing value for ${key}`);
    if (key === '--port') opts.port = Number(value);
    else if (key === '--http-port') opts.httpPort = Number(value);
    else if (key === '--secret') opts.secret = value;
    else if (key === '--host') opts.host = value;
    else throw new Error(`unknown option ${key}`);
    i++;
  }
  return opts;
}

let opts;
try {
  opts = parseArgs(process.argv.slice(2));
} catch (err) {
  process.stderr.write(`guide_server: ${err.message}\n`);
  process.exit(64);
}

// ---- state ----------------------------------------------------------------

const offsets = new Map(); // topic -> last offset published on it

function currentOffset(topic) {
  return offsets.get(topic) || 0;
}

// ---- WebSocket server (the guide's "WebSocket module") --------------------

const wss = new WebSocketServer({ port: opts.port, host: opts.host });

wss.on('connection', (ws, req) => {
  const url = new URL(req.url, 'http://localhost');
  const token = url.searchParams.get('token');

  let claims;
  try {
    claims = jwt.verify(token || '', opts.secret, { algorithms: ['HS256'] });
  } catch (err) {
    ws.close(4001, 'Invalid token');
    return;
  }

  ws.clientId = crypto.randomBytes(8).toString('hex');
  ws.userId = String(claims.sub);
  ws.topic = null; // the guide keeps a single topic per socket

  ws.send(JSON.stringify({
    type: 'connection_success',
    clientId: ws.clientId,
    userId: ws.userId,
    protocol: 1,
  }));

  ws.on('message', (raw) => {
    let msg;
    try {
      msg = JSON.parse(raw.toString());
    } catch (err) {
      ws.send(JSON.stringify({ type: 'error', code: 'bad_request', message: 'invalid JSON' }));
      return;
    }
    if (msg && msg.action === 'subscribe' && typeof msg.topic === 'string') {
      ws.topic = msg.topic; // replaces any previous subscription
      ws.send(JSON.stringify({
        type: 'subscribed',
        topic: msg.topic,
        offset: currentOffset(msg.topic),
        epoch: 'node',
      }));
    } else if (msg && msg.action === 'ping') {
      ws.send(JSON.stringify({ type: 'pong' }));
    } else {
      ws.send(JSON.stringify({ type: 'error', code: 'bad_request', message: 'unknown action' }));
    }
  });

  ws.on('error', () => {}); // a broken client must not crash the server
});

// The guide's broadcast: walk every client, compare its one topic, encode the
// message again for each match and send it. Deliberately not optimised.
function broadcast(topic, event, data) {
  const offset = currentOffset(topic) + 1;
  offsets.set(topic, offset);
  wss.clients.forEach((client) => {
    if (client.readyState === WebSocket.OPEN && client.topic === topic) {
      client.send(JSON.stringify({ type: 'rating_update', topic, offset, event, data }));
    }
  });
}

// ---- HTTP server (POST /ratings, GET /healthz) ----------------------------

function sendJson(res, status, body) {
  const text = JSON.stringify(body);
  res.writeHead(status, {
    'Content-Type': 'application/json',
    'Content-Length': Buffer.byteLength(text),
  });
  res.end(text);
}

function createRating(body) {
  const now = new Date().toISOString();
  return {
    id: 'r_' + crypto.randomBytes(8).toString('hex'),
    gameId: String(body.gameId),
    userId: String(body.userId),
    score: body.score,
    comment: body.comment === undefined ? null : body.comment,
    timestamp: now,
    createdAt: now,
    updatedAt: now,
    version: 1,
  };
}

const server = http.createServer((req, res) => {
  const path = req.url.split('?')[0];

  if (req.method === 'GET' && path === '/healthz') {
    sendJson(res, 200, { status: 'ok' });
    return;
  }

  if (req.method === 'POST' && path === '/ratings') {
    const chunks = [];
    req.on('data', (chunk) => chunks.push(chunk));
    req.on('end', () => {
      let body;
      try {
        body = JSON.parse(Buffer.concat(chunks).toString('utf8'));
      } catch (err) {
        sendJson(res, 400, { error: 'invalid JSON' });
        return;
      }
      if (!body || body.gameId === undefined || body.userId === undefined) {
        sendJson(res, 422, { error: 'gameId and userId are required' });
        return;
      }
      const rating = createRating(body);
      // Broadcast, then answer. The guide's own server, measured with every subscriber and
      // the publisher in one process, answered POSTs at p50 16.6-17.3 ms (issue 28): only an
      // answer that waits for the whole broadcast explains that. Answering first, this
      // model answered at 2.5 ms in the same harness, and flattered the guide.
      for (const topic of ['rating.global', `rating.game.${rating.gameId}`, `rating.user.${rating.userId}`]) {
        broadcast(topic, 'created', rating);
      }
      sendJson(res, 201, rating);
    });
    return;
  }

  sendJson(res, 404, { error: 'not found' });
});

// ---- start-up and shut-down -----------------------------------------------

const wsListening = new Promise((resolve) => wss.on('listening', resolve));
const httpListening = new Promise((resolve) => server.listen(opts.httpPort, opts.host, resolve));

for (const emitter of [wss, server]) {
  emitter.on('error', (err) => {
    process.stderr.write(`guide_server: ${err.message}\n`);
    process.exit(1);
  });
}

Promise.all([wsListening, httpListening]).then(() => {
  process.stdout.write(`READY ${wss.address().port} ${server.address().port}\n`);
});

function shutdown() {
  wss.clients.forEach((client) => client.close(1001, 'Server shutting down'));
  server.close();
  wss.close(() => process.exit(0));
  setTimeout(() => process.exit(0), 1000).unref();
}
process.on('SIGINT', shutdown);
process.on('SIGTERM', shutdown);
