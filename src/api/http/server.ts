// The HTTP listener beside gRPC: HTTP/1.1 with keep-alive, HTTPS with the gRPC certificate when TLS
// is configured (a client certificate required with a client CA), plain HTTP only on loopback
// (config.ts refuses anything else). It bounds what a client can make kmsd hold (header and URL
// size, a 1 MiB body refused before it is read whole, timeouts), then hands the request to the
// first dialect that claims it. A refusal made before the body is read is shaped by the dialect the
// request is for, as far as its request line and headers tell (Dialect.refuse). Dialects speak wire
// formats only; identity, policy, limits and audit are behind HttpContext.run (src/api/admission.ts).
//
// For the AWS dialect (src/api/http/aws/index.ts): register it by adding
//   import { awsDialect } from './aws';
// and putting `awsDialect` FIRST in DIALECTS below (it matches on X-Amz-Target; Alibaba takes the rest).

import fs from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import net from 'node:net';
import type tls from 'node:tls';
import crypto from 'node:crypto';
import type { Logger } from '../../kms/service';
import { principalFromCertificate } from '../grpc/auth';
import { alibabaDialect } from './alibaba';
import { awsDialect } from './aws';
import { xksDialect } from './xks';
import { consoleDialect } from './console';
import type { Dialect, HttpAnswer, HttpCall, HttpContext } from './types';
import { CALL_TURN_BUDGET_MS, Turns } from '../../turns';
import { HTTP_ERROR_TABLE, HTTP_REFUSAL_TABLE, HttpRefusal } from './error-table';

// The XKS proxy first: its requests carry SigV4 too, but it claims them by path (.../kms/xks/v1/...).
// The console's static files are claimed by path (/console/) too.
export const DIALECTS: Dialect[] = [consoleDialect(), xksDialect, awsDialect, alibabaDialect];

/** Largest request body read, bytes; a larger one is refused with 413 before it is read whole. */
export const MAX_BODY_BYTES = 1024 * 1024;
/** Largest request line plus headers, bytes (Node answers 431 above it). */
export const MAX_HEADER_BYTES = 16 * 1024;
/** Longest URL (path and query) accepted, bytes. */
export const MAX_URL_BYTES = 16 * 1024;

export interface HttpListenerOptions {
  host: string;
  port: number;
  tls?: { certFile: string; keyFile: string; clientCaFile?: string };
  ctx: HttpContext;
  log: Logger;
  dialects?: Dialect[];
  /**
   * Asked before a request goes to its dialect: kmsd listens before the token is open, and a
   * request waits for the promise until it is (a rejection is answered as TokenOpening, with its
   * message); nothing (undefined) when it is ready now.
   */
  ready?: () => Promise<void> | undefined;
}

export interface HttpListener {
  port: number;
  /** Stops accepting, lets in-flight requests finish (at most graceMs), then closes idle keep-alive connections. */
  close(graceMs?: number): Promise<void>;
}

function plain(refusal: HttpRefusal, message: string, requestId: string): HttpAnswer {
  // When no dialect claims the request (or none shapes refusals) the answer is Alibaba-shaped: it
  // is the default dialect at '/'.
  const { code, status } = HTTP_REFUSAL_TABLE[refusal].alibaba;
  return {
    status,
    headers: { 'content-type': 'application/json; charset=utf-8', 'cache-control': 'no-store', 'x-acs-request-id': requestId },
    body: JSON.stringify({ Code: code, Message: message, RequestId: requestId, HostId: 'kmsd' }),
  };
}

/** What is known of a request refused before it is read whole. */
type Known = Pick<HttpCall, 'method' | 'path' | 'rawQuery' | 'headers'>;

/** A refusal before the body is read, in the shape of the dialect the request is for as far as `known` tells. */
function early(dialects: Dialect[], known: Known, refusal: HttpRefusal, message: string, requestId: string): HttpAnswer {
  const call: HttpCall = { requestId, ...known, body: Buffer.alloc(0), peer: '', receivedAt: Date.now() };
  let dialect: Dialect | undefined;
  try {
    dialect = dialects.find((d) => d.matches(call));
  } catch {
    dialect = undefined;
  }
  return dialect?.refuse ? dialect.refuse(refusal, message, requestId) : plain(refusal, message, requestId);
}

/**
 * What Node kept of a request whose headers overflowed (err.rawPacket: the bytes of the chunk being
 * parsed, often only the tail of the headers): the request line when it is there, and every whole
 * or cut-off header line, enough for a dialect to recognize its own request.
 */
function knownFromRaw(raw: unknown): Known {
  const known: Known = { method: '', path: '', rawQuery: '', headers: {} };
  if (!Buffer.isBuffer(raw)) return known;
  const lines = raw.subarray(0, MAX_HEADER_BYTES * 2).toString('latin1').split('\r\n');
  const first = /^([A-Z]+) (\S+) HTTP\/1\.[01]$/.exec(lines[0] ?? '');
  if (first) {
    const q = first[2].indexOf('?');
    known.method = first[1];
    known.path = q < 0 ? first[2] : first[2].slice(0, q);
    known.rawQuery = q < 0 ? '' : first[2].slice(q + 1);
  }
  for (const line of lines.slice(first ? 1 : 0)) {
    const m = /^([!#$%&'*+.^_`|~0-9A-Za-z-]+):[ \t]*(.*)$/.exec(line);
    if (m && !(m[1].toLowerCase() in known.headers)) known.headers[m[1].toLowerCase()] = m[2];
  }
  return known;
}

function send(res: http.ServerResponse, a: HttpAnswer): void {
  if (res.headersSent || res.destroyed) return;
  res.writeHead(a.status, { ...a.headers, 'content-length': String(Buffer.byteLength(a.body)) });
  res.end(a.body);
}

/** How long an idle keep-alive connection is kept, and how many connections the listener holds. */
export const HTTP_KEEP_ALIVE_MS = 65_000;
export const HTTP_MAX_CONNECTIONS = 4096;

export async function listenHttp(o: HttpListenerOptions): Promise<HttpListener> {
  const dialects = o.dialects ?? DIALECTS;
  const turns = new Turns(CALL_TURN_BUDGET_MS);
  // requireHostHeader off: Node would answer a request without Host with an empty 400 of its own;
  // the dialects answer it instead (a V3 signature needs a signed Host anyway).
  // keepAliveTimeout: SDK agents keep idle sockets with no timeout of their own and do not read
  // Keep-Alive: timeout=N, so a server that closes idle sockets soon races their next request
  // ("socket hang up" in the Alibaba SDK, which does not retry). A minute, as load balancers use,
  // makes that rare; the connection cap bounds what idle sockets can hold.
  const common: http.ServerOptions = { maxHeaderSize: MAX_HEADER_BYTES, keepAlive: true, requestTimeout: 30_000, headersTimeout: 10_000, keepAliveTimeout: HTTP_KEEP_ALIVE_MS, requireHostHeader: false };
  const failed = (res: http.ServerResponse, e: unknown) => {
    o.log.error({ err: (e as Error).message }, 'http request failed');
    const { code, status } = HTTP_ERROR_TABLE.InternalFailure.alibaba;
    send(res, { status, headers: { 'content-type': 'application/json; charset=utf-8' }, body: JSON.stringify({ Code: code, Message: 'internal error', RequestId: '', HostId: 'kmsd' }) });
  };
  const handler = (req: http.IncomingMessage, res: http.ServerResponse) => {
    try {
      serve(req, res);
    } catch (e) {
      failed(res, e);
    }
  };
  let server: http.Server;
  if (o.tls) {
    server = https.createServer(
      {
        ...common,
        cert: fs.readFileSync(o.tls.certFile),
        key: fs.readFileSync(o.tls.keyFile),
        ca: o.tls.clientCaFile ? fs.readFileSync(o.tls.clientCaFile) : undefined,
        requestCert: Boolean(o.tls.clientCaFile),
        rejectUnauthorized: Boolean(o.tls.clientCaFile),
        minVersion: 'TLSv1.2',
      },
      handler,
    );
  } else {
    server = http.createServer(common, handler);
  }
  server.on('clientError', (err, socket) => {
    // Oversized headers, bytes that are not HTTP, timeouts: answered (Alibaba-shaped, as no dialect
    // was chosen) where the socket is still writable, then closed; logged without content.
    const code = (err as NodeJS.ErrnoException).code;
    o.log.warn({ peer: (socket as net.Socket).remoteAddress, reason: code ?? err.message }, 'http client error');
    if (!socket.writable) return socket.destroy();
    const a =
      code === 'HPE_HEADER_OVERFLOW'
        ? early(dialects, knownFromRaw((err as { rawPacket?: unknown }).rawPacket), 'HeadersTooLarge', `request line and headers: larger than ${MAX_HEADER_BYTES} bytes`, '')
        : code === 'ERR_HTTP_REQUEST_TIMEOUT'
          ? plain('RequestTimeout', 'the request was not received in time', '')
          : plain('NotHttp', 'not a well-formed HTTP/1.1 request', '');
    const status = a.status;
    const head = Object.entries(a.headers)
      .filter(([k]) => k !== 'content-length' && k !== 'connection')
      .map(([k, v]) => `${k}: ${v}\r\n`)
      .join('');
    socket.end(`HTTP/1.1 ${status} ${http.STATUS_CODES[status]}\r\nConnection: close\r\n${head}Content-Length: ${Buffer.byteLength(a.body)}\r\n\r\n${a.body}`);
  });

  // Callbacks rather than promises from here to the dialect: at a few thousand requests per second
  // each promise and closure per request shows in the event loop's time and in garbage collection.
  function serve(req: http.IncomingMessage, res: http.ServerResponse): void {
    const requestId = crypto.randomUUID();
    const receivedAt = Date.now();
    const url = req.url ?? '/';
    const q = url.indexOf('?');
    const known: Known = { method: req.method ?? 'GET', path: q < 0 ? url : url.slice(0, q), rawQuery: q < 0 ? '' : url.slice(q + 1), headers: req.headers };
    if (url.length > MAX_URL_BYTES) {
      req.resume();
      return send(res, early(dialects, known, 'HeadersTooLarge', `URL: longer than ${MAX_URL_BYTES} bytes`, requestId));
    }
    let certPrincipal: string | undefined;
    if (o.tls?.clientCaFile) {
      const cert = (req.socket as tls.TLSSocket).getPeerCertificate?.();
      const p = cert && Object.keys(cert).length ? principalFromCertificate(cert) : { refused: 'no client certificate' };
      if ('refused' in p) {
        req.resume();
        const { code, status } = HTTP_ERROR_TABLE.Unauthenticated.alibaba;
        return send(res, { status, headers: { 'content-type': 'application/json; charset=utf-8' }, body: JSON.stringify({ Code: code, Message: p.refused, RequestId: requestId, HostId: 'kmsd' }) });
      }
      certPrincipal = p.principal;
    }
    const declared = Number(req.headers['content-length'] ?? 0);
    if (declared > MAX_BODY_BYTES) {
      res.setHeader('connection', 'close');
      send(res, early(dialects, known, 'BodyTooLarge', `body: larger than ${MAX_BODY_BYTES} bytes`, requestId));
      req.socket.destroySoon?.();
      return;
    }
    readBody(req, (body) => {
      try {
        received(req, res, known, requestId, receivedAt, certPrincipal, body);
      } catch (e) {
        failed(res, e);
      }
    });
  }

  function received(req: http.IncomingMessage, res: http.ServerResponse, known: Known, requestId: string, receivedAt: number, certPrincipal: string | undefined, body: Buffer | null | undefined): void {
    if (body === undefined) {
      // The client broke off or sent a malformed body (clientError answers where it still can).
      o.log.warn({ requestId, peer: req.socket.remoteAddress }, 'http request body not received whole');
      return;
    }
    if (body === null) {
      res.setHeader('connection', 'close');
      send(res, early(dialects, known, 'BodyTooLarge', `body: larger than ${MAX_BODY_BYTES} bytes`, requestId));
      req.socket.destroySoon?.();
      return;
    }
    const call: HttpCall = {
      requestId,
      ...known,
      body,
      peer: req.socket.remoteAddress ?? '',
      receivedAt,
      certPrincipal,
    };
    const waiting = o.ready?.();
    if (!waiting) return turns.run(() => dispatch(call, res));
    waiting
      .then(
        () => turns.run(() => dispatch(call, res)),
        (e: unknown) => send(res, early(dialects, known, 'TokenOpening', (e as Error).message, requestId)),
      )
      .catch((e: unknown) => failed(res, e));
  }

  /**
   * Hands a request read whole to its dialect. Started from a turn (src/turns.ts), so the requests
   * of one poll of the sockets start together: their token operations then reach the addon's
   * workers in one hand-over (one wake-up) instead of one each.
   */
  function dispatch(call: HttpCall, res: http.ServerResponse): void {
    try {
      const dialect = dialects.find((d) => d.matches(call));
      if (!dialect) return send(res, plain('UnknownAction', `no API at ${call.path.slice(0, 128)}`, call.requestId));
      dialect
        .handle(call, o.ctx)
        .then((a) => send(res, a))
        .catch((e: unknown) => failed(res, e));
    } catch (e) {
      failed(res, e);
    }
  }

  server.maxConnections = HTTP_MAX_CONNECTIONS;
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen({ host: o.host, port: o.port }, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const port = (server.address() as net.AddressInfo).port;
  return {
    port,
    close: (graceMs = 10_000) =>
      new Promise<void>((resolve) => {
        const force = setTimeout(() => {
          server.closeAllConnections();
          resolve();
        }, graceMs);
        force.unref();
        server.close(() => {
          clearTimeout(force);
          resolve();
        });
        server.closeIdleConnections();
      }),
  };
}

/** The whole body; null as soon as it passes MAX_BODY_BYTES (the rest is not read); undefined if it never ends. Calls `done` once. */
function readBody(req: http.IncomingMessage, done: (body: Buffer | null | undefined) => void): void {
  const chunks: Buffer[] = [];
  let size = 0;
  let finished = false;
  const finish = (body: Buffer | null | undefined) => {
    if (finished) return;
    finished = true;
    done(body);
  };
  req.on('data', (c: Buffer) => {
    if (finished) return;
    size += c.length;
    if (size > MAX_BODY_BYTES) {
      req.pause();
      finish(null);
      return;
    }
    chunks.push(c);
  });
  req.on('end', () => finish(chunks.length === 1 ? chunks[0] : Buffer.concat(chunks, size)));
  const broken = () => finish(undefined);
  req.on('error', broken);
  req.on('close', broken);
}
