// A real kmsd with its HTTP listener (the Alibaba and AWS dialects) on a loopback port, and a plain
// node:http client for requests the SDKs would never send (tampered, replayed, oversized).

import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { Kmsd, StartOptions, startKmsd } from './daemon';
import { within } from './poll';

export interface HttpKmsd extends Kmsd {
  httpPort: number;
  /** HOST:PORT of the HTTP listener. */
  httpEndpoint: string;
  /** The development access key kmsd wrote to DATA_DIR/dev-access-key.json (principal local-admin). */
  devKey: { AccessKeyId: string; AccessKeySecret: string };
}

export async function startHttpKmsd(opts: StartOptions = {}): Promise<HttpKmsd> {
  const k = await startKmsd({ ...opts, args: ['--http-listen', '127.0.0.1:0', ...(opts.args ?? [])] });
  try {
    // The HTTP line follows the gRPC one in the same start-up turn.
    let m: RegExpExecArray | null = null;
    for (let i = 0; i < 100 && !m; i++) {
      m = /http listening on 127\.0\.0\.1:(\d+)/.exec(k.logs());
      if (!m) await new Promise((r) => setTimeout(r, 50));
    }
    if (!m) throw new Error(`kmsd did not print "http listening on":\n${k.logs()}`);
    const httpPort = Number(m[1]);
    return Object.assign(k, { httpPort, httpEndpoint: `127.0.0.1:${httpPort}`, devKey: await readDevKey(k) });
  } catch (e) {
    await k.stop();
    throw e;
  }
}

/**
 * The development access key of a kmsd started on the development token: written just before the
 * token is declared ready, which may come after the log lines startKmsd waits for.
 */
export async function readDevKey(k: Kmsd): Promise<{ AccessKeyId: string; AccessKeySecret: string }> {
  const keyFile = path.join(k.dataDir, 'dev-access-key.json');
  let devKey: { AccessKeyId: string; AccessKeySecret: string } | undefined;
  const read = () => {
    try {
      devKey = JSON.parse(fs.readFileSync(keyFile, 'utf8'));
      return true;
    } catch {
      return false; // not there yet, or not written whole yet
    }
  };
  if ((await within(10_000, read, 20)) < 0 || !devKey) throw new Error(`kmsd wrote no ${keyFile}:\n${k.logs()}`);
  return devKey;
}

export interface RawAnswer {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: string;
  json: any; // eslint-disable-line @typescript-eslint/no-explicit-any
}

/** The whole answer of a response: status, headers, body text and its JSON (undefined when it is not JSON). */
export function answerOf(res: http.IncomingMessage): Promise<RawAnswer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    res.on('data', (c: Buffer) => chunks.push(c));
    res.on('end', () => {
      const body = Buffer.concat(chunks).toString('utf8');
      let json: unknown;
      try {
        json = JSON.parse(body);
      } catch {
        json = undefined;
      }
      resolve({ status: res.statusCode ?? 0, headers: res.headers, body, json });
    });
    res.on('error', reject);
  });
}

/**
 * Ends a request with its body. kmsd answers a Content-Length over its limit before reading the body
 * and closes the connection, so writing a large body at once races that close (EPIPE before the
 * answer is read): for such a body the headers go first, and the body only if no answer came.
 */
export function sendBody(req: http.ClientRequest, body?: string | Buffer): void {
  if (body === undefined || Buffer.byteLength(body) <= 1024 * 1024) {
    req.end(body);
    return;
  }
  let answered = false;
  req.once('response', () => (answered = true));
  req.flushHeaders();
  setTimeout(() => {
    if (!answered) req.end(body);
  }, 2000).unref();
}

/** One request on its own connection; resolves with whatever kmsd answered (or rejects if it hung up). */
export function rawRequest(port: number, o: { method?: string; path?: string; headers?: Record<string, string>; body?: string | Buffer }): Promise<RawAnswer> {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port, method: o.method ?? 'POST', path: o.path ?? '/', headers: o.headers, agent: false }, (res) => {
      answerOf(res).then(resolve, reject);
    });
    req.on('error', reject);
    sendBody(req, o.body);
  });
}
