// One chat completion through the official `openai` Node SDK, for tests/interop.
//
// Usage: node chat.mjs '<json spec>'   (or the spec on stdin, with no argument or "-")
//
// The spec: {base_url, api_key, model, messages, stream, include_usage, helper,
// max_tokens, timeout}. base_url is what the SDK takes (".../v1"); timeout is in
// seconds. `helper: true` streams with client.chat.completions.stream(...) and reads
// runner.finalChatCompletion(); otherwise create() with or without `stream: true`.
//
// The SDK's own `timeout` ends when the response head arrives: a stream that stalls
// after it would hang for ever (undici's body timeout is 5 minutes). So, as the
// Python SDKs' read timeout does, a watchdog aborts the request when `timeout`
// seconds pass without a response head or a chunk, and reports a client.timeout.
//
// Prints exactly one JSON line on stdout:
//   {text, finish_reason, usage, id, model, chunks, pieces, status, headers, error: null}
// or, when the API (or the connection) failed,
//   {..., status, headers, error: {status, type, code, message}}
// where whatever was assembled before a mid-stream failure is kept. Failures that
// are not the API's or the connection's (a bug here) exit with status 1.
import { readFileSync } from 'node:fs';
import OpenAI from 'openai';
import { VERSION } from 'openai/version';

function readSpec() {
  const arg = process.argv[2];
  const text = arg !== undefined && arg !== '-' ? arg : readFileSync(0, 'utf8');
  return JSON.parse(text);
}

const spec = readSpec();
const result = {
  text: '',
  finish_reason: null,
  usage: null,
  id: null,
  model: null,
  chunks: 0,
  pieces: [],
  status: 0,
  headers: {},
  error: null,
  sdk_version: VERSION,
};

let lastResponse = null;
function noteResponse(response) {
  lastResponse = response;
  result.status = response.status;
  result.headers = Object.fromEntries(response.headers);
}

const timeoutMs = Math.round((spec.timeout ?? 20) * 1000);
const aborter = new AbortController();
class IdleTimeout extends Error {}
let timedOut = false;
let watchdog = null;
function rearm() {
  clearTimeout(watchdog);
  watchdog = setTimeout(() => {
    timedOut = true;
    aborter.abort();
  }, timeoutMs);
}

const client = new OpenAI({
  baseURL: spec.base_url,
  apiKey: spec.api_key ?? 'sk-test',
  maxRetries: 0,
  timeout: timeoutMs,
  // The global fetch, watched: the only way to see the status and headers of a
  // streamed helper's response (the runner does not expose its Response).
  fetch: async (url, init) => {
    const response = await fetch(url, init);
    noteResponse(response);
    return response;
  },
});

const body = { model: spec.model, messages: spec.messages };
if (spec.max_tokens !== undefined && spec.max_tokens !== null) body.max_tokens = spec.max_tokens;
const streamOptions = spec.include_usage ? { stream_options: { include_usage: true } } : {};

const options = { signal: aborter.signal };

function takeChunk(chunk) {
  rearm();
  result.chunks += 1;
  result.id ??= chunk.id ?? null;
  result.model ??= chunk.model ?? null;
  if (chunk.usage) result.usage = chunk.usage;
  const choice = chunk.choices?.[0];
  if (choice?.finish_reason) result.finish_reason = choice.finish_reason;
  return choice?.delta?.content ?? '';
}

function takeCompletion(completion) {
  const choice = completion.choices?.[0];
  result.text = choice?.message?.content ?? '';
  result.finish_reason = choice?.finish_reason ?? null;
  result.usage = completion.usage ?? null;
  result.id = completion.id ?? null;
  result.model = completion.model ?? null;
}

async function run() {
  rearm();
  if (spec.helper) {
    const runner = client.chat.completions.stream({ ...body, ...streamOptions }, options);
    runner.on('content', (delta) => result.pieces.push(delta));
    for await (const chunk of runner) takeChunk(chunk);
    takeCompletion(await runner.finalChatCompletion());
  } else if (spec.stream) {
    const stream = await client.chat.completions.create(
      { ...body, stream: true, ...streamOptions },
      options,
    );
    rearm();
    for await (const chunk of stream) {
      const piece = takeChunk(chunk);
      if (piece) result.pieces.push(piece);
    }
    result.text = result.pieces.join('');
  } else {
    const { data } = await client.chat.completions.create(body, options).withResponse();
    takeCompletion(data);
  }
}

// The chain of `cause`s under an error: undici nests the socket error two deep.
function causes(err) {
  const chain = [];
  for (let e = err?.cause; e && chain.length < 5; e = e.cause) chain.push(e);
  return chain;
}

function describe(err) {
  const status = lastResponse?.status ?? 0;
  const detail = [err, ...causes(err)]
    .map((e) => (e?.code ? `${e.message} [${e.code}]` : (e?.message ?? String(e))))
    .join(': ');
  if (err instanceof IdleTimeout) {
    const message = `no response head or chunk for ${timeoutMs} ms (the driver's watchdog)`;
    return { status, type: 'client.timeout', code: 'IdleTimeout', message };
  }
  if (err instanceof OpenAI.APIConnectionTimeoutError) {
    return { status, type: 'client.timeout', code: err.constructor.name, message: detail };
  }
  if (err instanceof OpenAI.APIConnectionError) {
    return { status, type: 'client.connection', code: err.constructor.name, message: detail };
  }
  if (err instanceof OpenAI.APIError) {
    // err.error is the body's "error" object (or a mid-stream event's).
    const inner = err.error && typeof err.error === 'object' ? err.error : {};
    return {
      status: err.status ?? status,
      type: err.type ?? inner.type ?? null,
      code: err.code ?? inner.code ?? null,
      message: typeof inner.message === 'string' ? inner.message : err.message,
    };
  }
  if (err instanceof SyntaxError) {
    return { status, type: 'client.decode', code: 'SyntaxError', message: err.message };
  }
  // undici: a body cut short rejects with TypeError('terminated'), a refused
  // connection with TypeError('fetch failed'), the cause naming the socket error.
  if (err instanceof TypeError && (err.message === 'terminated' || err.message === 'fetch failed')) {
    const code = causes(err).find((e) => e?.code)?.code ?? 'TypeError';
    return { status, type: 'client.connection', code, message: detail };
  }
  return null;
}

try {
  // An aborted stream ends its `for await` quietly: the flag tells.
  await run();
  if (timedOut) throw new IdleTimeout();
} catch (caught) {
  const err = timedOut ? new IdleTimeout() : caught;
  const error = describe(err);
  if (error === null) {
    process.stderr.write(`${err?.stack ?? err}\n`);
    process.exit(1);
  }
  result.error = error;
  result.status = error.status;
  if (!result.text) result.text = result.pieces.join('');
}
clearTimeout(watchdog);
process.stdout.write(`${JSON.stringify(result)}\n`);
