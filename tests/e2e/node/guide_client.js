#!/usr/bin/env node
// guide_client.js - the browser client of the OpenClaw WebSocket guide, as a
// Node program for the end-to-end tests.
//
// It does what the guide's client does and nothing more: it opens
// `url + '?token=' + token` (no path, exactly as the guide builds it), sends one
// `{"action":"subscribe","topic":TOPIC}` when the socket opens, and then just
// listens. The tests use it to check that a client written against the guide
// still works unchanged against ratewire (docs/protocol.md promises that).
//
// Output on stdout, one JSON object per line:
//   {"type":"_open"}                          the socket is open (post ratings now)
//   <every frame received, re-serialised on one line>
//   {"type":"_closed","code":C,"reason":R}    the server closed the socket
//
// Exit codes: 0 after --count rating_update frames (count <= 0: never),
//             1 on timeout, 2 when the socket closes (or cannot connect),
//             64 on bad arguments.
//
// Usage:
//   npm ci --no-audit --no-fund
//   node guide_client.js --url ws://127.0.0.1:8081 --token T --topic rating.game.42 \
//       --count 2 --timeout-ms 10000

'use strict';

const WebSocket = require('ws');

function parseArgs(argv) {
  const opts = { url: 'ws://127.0.0.1:8081', token: '', topic: 'rating.global', count: 1, timeoutMs: 10000 };
  for (let i = 0; i < argv.length; i++) {
    const key = argv[i];
    const value = argv[i + 1];
    if (value === undefined) throw new Error(`missing value for ${key}`);
    if (key === '--url') opts.url = value;
    else if (key === '--token') opts.token = value;
    else if (key === '--topic') opts.topic = value;
    else if (key === '--count') opts.count = Number(value);
    else if (key === '--timeout-ms') opts.timeoutMs = Number(value);
    else throw new Error(`unknown option ${key}`);
    i++;
  }
  if (!Number.isFinite(opts.count) || !Number.isFinite(opts.timeoutMs)) {
    throw new Error('--count and --timeout-ms must be numbers');
  }
  return opts;
}

let opts;
try {
  opts = parseArgs(process.argv.slice(2));
} catch (err) {
  process.stderr.write(`guide_client: ${err.message}\n`);
  process.exit(64);
}

let finished = false;

// Write one line and exit only once it has been handed to the OS.
function finish(code, line) {
  if (finished) return;
  finished = true;
  const done = () => process.exit(code);
  if (line === undefined) done();
  else process.stdout.write(line + '\n', done);
}

function printLine(obj) {
  process.stdout.write(JSON.stringify(obj) + '\n');
}

const timer = setTimeout(() => {
  process.stderr.write(`guide_client: timeout after ${opts.timeoutMs} ms\n`);
  finish(1);
}, opts.timeoutMs);

// Exactly the guide's URL construction.
const ws = new WebSocket(opts.url + '?token=' + opts.token);
let updates = 0;

ws.on('open', () => {
  if (finished) return;
  printLine({ type: '_open' });
  ws.send(JSON.stringify({ action: 'subscribe', topic: opts.topic }));
});

ws.on('message', (data, isBinary) => {
  if (finished) return;
  const text = isBinary ? Buffer.from(data).toString('base64') : data.toString();
  let frame;
  try {
    frame = JSON.parse(text);
  } catch (err) {
    frame = { type: '_raw', binary: Boolean(isBinary), data: text };
  }
  const line = JSON.stringify(frame);
  if (frame && frame.type === 'rating_update') updates++;
  if (opts.count > 0 && updates >= opts.count) {
    ws.terminate();
    finish(0, line);
  } else {
    process.stdout.write(line + '\n');
  }
});

ws.on('error', (err) => {
  // 'close' follows (code 1006 when the connection never opened).
  process.stderr.write(`guide_client: ${err.message}\n`);
});

ws.on('close', (code, reason) => {
  finish(2, JSON.stringify({ type: '_closed', code, reason: reason.toString() }));
});
