// A third-party upstream for the interop tests, on Node's own `http` module (no npm deps).
//
//   node node_upstream.js [--port 0] [--host 127.0.0.1] [--payloads DIR]
//
// prints "listening on http://HOST:PORT" on stdout once it accepts connections.
// The contract (the same for the nginx and aiohttp upstreams; tests/interop/servers/
// __init__.py has the long form):
//
//   POST /{framing}/{casing}/{delivery}/v1/chat/completions | /v1/messages
//     framing   length | chunked | close | gzip
//     casing    lower | title | upper
//     delivery  whole | event | byte
//   GET /health -> 200; GET /_stats -> {"requests", "paths", "last_path",
//   "last_headers", "last_body"}.
//
// Node keeps the spelling of the header names it is given. With casing `title` the
// server lets Node write what it writes by default (its own `Date`, `Connection`,
// `Keep-Alive`, `Transfer-Encoding`); with `lower`/`upper` every header, those too, is
// written by this file in that casing and Node adds none.
'use strict';

const fs = require('fs');
const http = require('http');
const path = require('path');
const zlib = require('zlib');

const FRAMINGS = ['length', 'chunked', 'close', 'gzip'];
const CASINGS = ['lower', 'title', 'upper'];
const DELIVERIES = ['whole', 'event', 'byte'];
const EVENT_GAP_MS = 2;
const HOLD_MS = 1500; // model `hold-after-last`: the end of body comes this much later
const PATH_RE = /^\/([a-z]+)\/([a-z]+)\/([a-z]+)(\/v1\/chat\/completions|\/v1\/messages)$/;

function parseArgs(argv) {
  const args = {
    port: 0,
    host: '127.0.0.1',
    payloads: path.join(__dirname, '..', 'payloads'),
  };
  for (let i = 0; i < argv.length; i += 2) {
    const key = argv[i].replace(/^--/, '');
    if (!(key in args) || i + 1 >= argv.length) {
      throw new Error(`usage: node node_upstream.js [--port N] [--host H] [--payloads DIR]`);
    }
    args[key] = key === 'port' ? Number(argv[i + 1]) : argv[i + 1];
  }
  return args;
}

const args = parseArgs(process.argv.slice(2));

function readPayload(name) {
  return fs.readFileSync(path.join(args.payloads, name), 'latin1');
}

const PAYLOADS = {
  openaiJson: readPayload('openai_chat.json'),
  openaiStream: readPayload('openai_chat_stream.sse'),
  openaiStreamUsage: readPayload('openai_chat_stream_usage.sse'),
  anthropicJson: readPayload('anthropic_messages.json'),
  anthropicStream: readPayload('anthropic_messages_stream.sse'),
};
const ERRORS = JSON.parse(readPayload('errors.json'));
const RECORDED_MODELS = {openai: '"gpt-4o-mini"', anthropic: '"claude-3-5-sonnet-20241022"'};

const stats = {requests: 0, paths: {}, last_path: null, last_headers: {}, last_body: null};

// JSON.stringify with every non-ASCII character escaped: the bodies stay ASCII.
function asciiJson(value) {
  return JSON.stringify(value).replace(
    /[\u0080-\uffff]/g,
    (c) => '\\u' + c.charCodeAt(0).toString(16).padStart(4, '0'),
  );
}

function spell(name, casing) {
  if (casing === 'lower') return name.toLowerCase();
  if (casing === 'upper') return name.toUpperCase();
  return name;
}

// SSE text -> its events, each with its blank line.
function sseEvents(text) {
  return text.split(/(?<=\n\n)/).filter((event) => event.length > 0);
}

function splitInTwo(text) {
  const half = Math.floor(text.length / 2);
  return [text.slice(0, half), text.slice(half)];
}

// The pieces, gzip-compressed as one stream flushed (Z_SYNC_FLUSH) after each piece: the
// compressed pieces, each decodable once the ones before it have arrived.
function gzipPieces(pieces) {
  return new Promise((resolve, reject) => {
    const gzip = zlib.createGzip();
    const out = [];
    let current = [];
    gzip.on('data', (data) => current.push(data));
    gzip.on('error', reject);
    let i = 0;
    const next = () => {
      if (i < pieces.length) {
        gzip.write(Buffer.from(pieces[i++], 'latin1'));
        gzip.flush(zlib.constants.Z_SYNC_FLUSH, () => {
          out.push(Buffer.concat(current));
          current = [];
          next();
        });
      } else {
        gzip.on('end', () => {
          // The last block and the trailer go with the last piece.
          out[out.length - 1] = Buffer.concat([out[out.length - 1], ...current]);
          resolve(out);
        });
        gzip.end();
      }
    };
    next();
  });
}

function later(ms, fn) {
  if (ms > 0) setTimeout(fn, ms);
  else setImmediate(fn);
}

// Send one answer: `pieces` are the body's natural units (SSE events, JSON halves).
// `resetAfter`: send that many of them (the head framing the whole body), then an RST.
// `holdMs`: after the last piece, keep the body open that long before ending it (a
// server slow to finish: a client that stops at [DONE] hangs up before the end).
async function send(req, res, variant, status, headers, pieces, resetAfter = null, holdMs = 0) {
  const {framing, casing, delivery} = variant;
  const reset = resetAfter !== null;
  let units;
  if (framing === 'gzip') {
    units = await gzipPieces(delivery === 'whole' && !reset ? [pieces.join('')] : pieces);
  } else {
    units = pieces.map((piece) => Buffer.from(piece, 'latin1'));
  }
  const total = units.reduce((n, b) => n + b.length, 0);
  const sent = reset ? units.slice(0, resetAfter) : units;
  let body = delivery === 'event' ? sent : [Buffer.concat(sent)];
  if (delivery === 'byte') {
    const all = body[0];
    body = [];
    for (let i = 0; i < all.length; i++) body.push(all.subarray(i, i + 1));
  }

  const out = [...headers];
  if (framing === 'gzip') out.push(['Content-Encoding', 'gzip']);
  if (framing === 'length') out.push(['Content-Length', String(total)]);
  const wantsClose = framing === 'close' || /close/i.test(req.headers.connection || '');
  if (framing === 'close') {
    res.removeHeader('Content-Length'); // Node then frames by closing the connection
    res.removeHeader('Transfer-Encoding');
  }
  if (framing === 'chunked' || framing === 'gzip') {
    res.removeHeader('Content-Length'); // else res.end(body) would get one from Node
  }
  if (casing !== 'title') {
    // Everything Node would add, in the chosen casing (it adds nothing it finds set).
    res.sendDate = false;
    out.push(['Date', new Date().toUTCString()]);
    out.push(['Connection', wantsClose ? 'close' : 'keep-alive']);
    if (framing === 'chunked' || framing === 'gzip') out.push(['Transfer-Encoding', 'chunked']);
  }
  if (wantsClose) res.shouldKeepAlive = false;
  const flat = [];
  for (const [name, value] of out) flat.push(spell(name, casing), value);
  res.writeHead(status, flat);

  if (delivery === 'whole' && !reset && !holdMs) {
    res.end(body[0]);
    return;
  }
  res.flushHeaders();
  const gap = delivery === 'event' ? EVENT_GAP_MS : 0;
  let i = 0;
  const next = () => {
    if (i < body.length) {
      // (No error: the client went away, and the answer with it.)
      res.write(body[i++], (error) => error || later(gap, next));
    } else if (reset) {
      // Abruptly: an RST, not a FIN (with `close` framing a FIN is a clean end).
      res.socket.resetAndDestroy();
    } else if (holdMs) {
      const hold = holdMs;
      holdMs = 0;
      later(hold, next);
    } else {
      res.end();
    }
  };
  next();
}

function api(route) {
  return route === '/v1/messages' ? 'anthropic' : 'openai';
}

function sendError(req, res, variant, route, status, retryAfter) {
  const headers = [['Content-Type', 'application/json']];
  if (retryAfter) headers.push(['Retry-After', '0']);
  const text = asciiJson(ERRORS[api(route)][String(status)]);
  return send(req, res, variant, status, headers, splitInTwo(text));
}

function plainAnswer(res, status, contentType, text) {
  res.writeHead(status, {'Content-Type': contentType, 'Content-Length': Buffer.byteLength(text)});
  res.end(text);
}

async function handle(req, res, rawBody) {
  const url = req.url.split('?')[0];
  if (url === '/health') return plainAnswer(res, 200, 'text/plain', 'ok\n');
  if (url === '/_stats') return plainAnswer(res, 200, 'application/json', asciiJson(stats));
  const match = PATH_RE.exec(url);
  const fallback = {framing: 'length', casing: 'title', delivery: 'whole'};
  if (match === null) return sendError(req, res, fallback, '/v1/chat/completions', 404, false);
  const [, framing, casing, delivery, route] = match;
  if (!FRAMINGS.includes(framing) || !CASINGS.includes(casing) || !DELIVERIES.includes(delivery)) {
    return sendError(req, res, fallback, route, 404, false);
  }
  const variant = {framing, casing, delivery};
  if (req.method !== 'POST') return sendError(req, res, variant, route, 404, false);

  stats.requests += 1;
  stats.paths[url] = (stats.paths[url] || 0) + 1;
  stats.last_path = url;
  stats.last_headers = {};
  for (let i = 0; i < req.rawHeaders.length; i += 2) {
    const name = req.rawHeaders[i].toLowerCase();
    const value = req.rawHeaders[i + 1];
    stats.last_headers[name] = name in stats.last_headers ? `${stats.last_headers[name]}, ${value}` : value;
  }
  stats.last_body = rawBody.toString('utf8');

  let body;
  try {
    body = JSON.parse(stats.last_body);
  } catch (e) {
    body = null;
  }
  if (body === null || typeof body !== 'object' || Array.isArray(body)) {
    return sendError(req, res, variant, route, 400, false);
  }
  const model = typeof body.model === 'string' ? body.model : null;
  if (model === 'status-429') return sendError(req, res, variant, route, 429, true);
  if (model === 'status-409') return sendError(req, res, variant, route, 409, true);
  const reset = model === 'reset-mid-stream';
  const holdMs = model === 'hold-after-last' ? HOLD_MS : 0;
  const stream = body.stream === true || reset;
  const includeUsage = Boolean(body.stream_options && body.stream_options.include_usage === true);

  const which = api(route);
  let text;
  if (which === 'anthropic') text = stream ? PAYLOADS.anthropicStream : PAYLOADS.anthropicJson;
  else if (!stream) text = PAYLOADS.openaiJson;
  else text = includeUsage ? PAYLOADS.openaiStreamUsage : PAYLOADS.openaiStream;
  if (model !== null) text = text.split(RECORDED_MODELS[which]).join(asciiJson(model));

  if (!stream) {
    return send(req, res, variant, 200, [['Content-Type', 'application/json']], splitInTwo(text));
  }
  const headers = [
    ['Content-Type', 'text/event-stream; charset=utf-8'],
    ['Cache-Control', 'no-cache'],
  ];
  return send(req, res, variant, 200, headers, sseEvents(text), reset ? 2 : null, holdMs);
}

const server = http.createServer((req, res) => {
  const chunks = [];
  req.on('data', (chunk) => chunks.push(chunk));
  req.on('end', () => {
    handle(req, res, Buffer.concat(chunks)).catch((error) => {
      process.stderr.write(`node upstream: ${error.stack}\n`);
      res.destroy();
    });
  });
});

server.listen(args.port, args.host, () => {
  const {address, port} = server.address();
  process.stdout.write(`listening on http://${address}:${port}\n`);
});

for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => process.exit(0));
}
