// A third-party upstream for the interop tests: nginx + njs (written for njs 0.7.9, the
// Debian 12 package: ES5 plus what njs 0.7 adds; r.send takes strings only, there is no
// zlib module and no shared dict, and the VM is cloned for every request, so nothing a
// request leaves in a global survives it).
//
// nginx.conf.template loads it (js_import upstream from upstream.js) and sets:
//   $interop_payloads  the directory of the recorded payloads
//   $interop_stats     a file the counts of /_stats live in (one nginx process: no races)
//
// The contract is in tests/interop/servers/__init__.py. What nginx decides, not this
// file: the names of Content-Type, Content-Length, Transfer-Encoding, Connection, Date,
// Server (so only the `title` casing); the framing (Content-Length when it is set here,
// else chunked, else, in a location with `chunked_transfer_encoding off`, the end of the
// connection); and gzip, which nginx's filter applies when the request accepts it,
// whatever the framing. Not offered: the `gzip` framing (nginx cannot compress for a
// request that does not accept gzip), the lower/upper casings (404 for those paths) and
// `reset-mid-stream` (501: njs cannot abort a connection mid-body).
import fs from 'fs';

var FRAMINGS = ['length', 'chunked', 'close'];
var CASINGS = ['title'];
var DELIVERIES = ['whole', 'event', 'byte'];
var EVENT_GAP_MS = 2;
var PATH_RE = /^\/([a-z]+)\/([a-z]+)\/([a-z]+)(\/v1\/chat\/completions|\/v1\/messages)$/;
var RECORDED_MODELS = {openai: '"gpt-4o-mini"', anthropic: '"claude-3-5-sonnet-20241022"'};

function readPayload(r, name) {
    return fs.readFileSync(r.variables.interop_payloads + '/' + name, 'utf8');
}

// JSON.stringify with every non-ASCII character escaped: the bodies stay ASCII, so a
// string's length is its length in bytes.
// (njs strings are UTF-8: a character beyond U+FFFF is one character here, and is
// written as its UTF-16 surrogate pair, as JSON.stringify in Node or json.dumps would.)
function hex4(code) {
    return '\\u' + ('0000' + code.toString(16)).slice(-4);
}

function asciiJson(value) {
    return JSON.stringify(value).replace(/[^\x00-\x7f]/g, function (c) {
        var code = c.codePointAt(0);
        if (code > 0xffff) {
            code -= 0x10000;
            return hex4(0xd800 + (code >> 10)) + hex4(0xdc00 + (code & 0x3ff));
        }
        return hex4(code);
    });
}

function emptyStats() {
    return {requests: 0, paths: {}, last_path: null, last_headers: {}, last_body: null};
}

function readStats(r) {
    try {
        return JSON.parse(fs.readFileSync(r.variables.interop_stats, 'utf8'));
    } catch (e) {
        return emptyStats();
    }
}

function record(r, path, body) {
    var stats = readStats(r);
    stats.requests += 1;
    stats.paths[path] = (stats.paths[path] || 0) + 1;
    stats.last_path = path;
    stats.last_headers = {};
    for (var i = 0; i < r.rawHeadersIn.length; i++) {
        var name = r.rawHeadersIn[i][0].toLowerCase();
        var value = r.rawHeadersIn[i][1];
        stats.last_headers[name] =
            name in stats.last_headers ? stats.last_headers[name] + ', ' + value : value;
    }
    stats.last_body = body;
    fs.writeFileSync(r.variables.interop_stats, JSON.stringify(stats));
}

function sseEvents(text) {
    var parts = text.split('\n\n');
    var events = [];
    for (var i = 0; i < parts.length; i++) {
        if (parts[i].length > 0) {
            events.push(parts[i] + '\n\n');
        }
    }
    return events;
}

function halves(text) {
    var half = Math.floor(text.length / 2);
    return [text.slice(0, half), text.slice(half)];
}

// Send one answer; `pieces` are the body's natural units (SSE events, JSON halves).
function send(r, variant, status, headers, pieces) {
    var body = variant.delivery === 'event' ? pieces : [pieces.join('')];
    if (variant.delivery === 'byte') {
        body = body.join('').split('');
    }
    r.status = status;
    for (var i = 0; i < headers.length; i++) {
        r.headersOut[headers[i][0]] = headers[i][1];
    }
    if (variant.framing === 'length') {
        r.headersOut['Content-Length'] = String(body.join('').length);
    }
    r.sendHeader();
    var gap = variant.delivery === 'event' ? EVENT_GAP_MS : 0;
    var next = 0;
    function step() {
        if (next < body.length) {
            r.send(body[next]);
            next += 1;
            if (variant.delivery === 'whole') {
                step();
            } else {
                setTimeout(step, gap);
            }
        } else {
            r.finish();
        }
    }
    step();
}

function sendError(r, variant, api, status, retryAfter) {
    var errors = JSON.parse(readPayload(r, 'errors.json'));
    var headers = [['Content-Type', 'application/json']];
    if (retryAfter) {
        headers.push(['Retry-After', '0']);
    }
    send(r, variant, status, headers, halves(asciiJson(errors[api][String(status)])));
}

function api(r) {
    var path = r.uri;
    var match = PATH_RE.exec(path);
    var fallback = {framing: 'length', casing: 'title', delivery: 'whole'};
    if (match === null) {
        sendError(r, fallback, 'openai', 404, false);
        return;
    }
    var which = match[4] === '/v1/messages' ? 'anthropic' : 'openai';
    if (FRAMINGS.indexOf(match[1]) < 0 || CASINGS.indexOf(match[2]) < 0 ||
            DELIVERIES.indexOf(match[3]) < 0) {
        sendError(r, fallback, which, 404, false);
        return;
    }
    var variant = {framing: match[1], casing: match[2], delivery: match[3]};
    if (r.method !== 'POST') {
        sendError(r, variant, which, 404, false);
        return;
    }
    var raw = r.requestText || '';
    record(r, path, raw);

    var body = null;
    try {
        body = JSON.parse(raw);
    } catch (e) {
        body = null;
    }
    if (body === null || typeof body !== 'object' || Array.isArray(body)) {
        sendError(r, variant, which, 400, false);
        return;
    }
    var model = typeof body.model === 'string' ? body.model : null;
    if (model === 'status-429' || model === 'status-409') {
        sendError(r, variant, which, Number(model.slice(-3)), true);
        return;
    }
    if (model === 'reset-mid-stream') {
        sendError(r, variant, which, 501, false);
        return;
    }
    var stream = body.stream === true;
    var includeUsage = Boolean(body.stream_options) && body.stream_options.include_usage === true;
    var name;
    if (which === 'anthropic') {
        name = stream ? 'anthropic_messages_stream.sse' : 'anthropic_messages.json';
    } else if (!stream) {
        name = 'openai_chat.json';
    } else {
        name = includeUsage ? 'openai_chat_stream_usage.sse' : 'openai_chat_stream.sse';
    }
    var text = readPayload(r, name);
    if (model !== null) {
        text = text.split(RECORDED_MODELS[which]).join(asciiJson(model));
    }
    if (!stream) {
        send(r, variant, 200, [['Content-Type', 'application/json']], halves(text));
        return;
    }
    // "; charset=utf-8" is added by nginx's charset filter (`charset` in the config): njs
    // would take a Content-Type with parameters for the whole type, and gzip_types would
    // then not match it.
    send(r, variant, 200, [
        ['Content-Type', 'text/event-stream'],
        ['Cache-Control', 'no-cache'],
    ], sseEvents(text));
}

function stats(r) {
    r.headersOut['Content-Type'] = 'application/json';
    r.return(200, asciiJson(readStats(r)));
}

function health(r) {
    r.headersOut['Content-Type'] = 'text/plain';
    r.return(200, 'ok\n');
}

export default {api: api, stats: stats, health: health};
