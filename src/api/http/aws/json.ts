// The request body of the AWS dialect: one JSON object, read strictly. JSON.parse keeps the last of
// two equal keys, so `{"KeyId":"a","KeyId":"b"}` would mean different things to kmsd and to a proxy
// or log reader in front of it that keeps the first; such a body is refused, as is invalid UTF-8,
// nesting deeper than any KMS request needs, and anything after the object.

import { HttpRefusalError } from '../error-table';

/** Deeper than any KMS request (an EncryptionContext is 2 levels; Tags 3). */
export const MAX_JSON_DEPTH = 16;

const utf8 = new TextDecoder('utf-8', { fatal: true });

function malformed(message: string): HttpRefusalError {
  return new HttpRefusalError('MalformedRequest', `request body: ${message}`);
}

/** Parses the body as one JSON object; an empty body is the empty object (as AWS KMS reads it). */
export function parseJsonObject(body: Buffer): Record<string, unknown> {
  if (body.length === 0) return {};
  let text: string;
  try {
    text = utf8.decode(body);
  } catch {
    throw malformed('is not valid UTF-8');
  }
  const p = new Parser(text);
  p.ws();
  if (text[p.i] !== '{') throw malformed('must be a JSON object');
  const value = p.value(0) as Record<string, unknown>;
  p.ws();
  if (p.i !== text.length) throw malformed(`unexpected ${describe(text, p.i)} after the JSON object`);
  return value;
}

function describe(text: string, i: number): string {
  if (i >= text.length) return 'end of body';
  return `character ${JSON.stringify(text[i])} at offset ${i}`;
}

const NUMBER_RE = /-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?/y;
const STRING_RE = /"(?:[^"\\\u0000-\u001f]|\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4}))*"/y;

class Parser {
  i = 0;
  constructor(private readonly s: string) {}

  ws(): void {
    const s = this.s;
    while (this.i < s.length) {
      const c = s.charCodeAt(this.i);
      if (c === 0x20 || c === 0x09 || c === 0x0a || c === 0x0d) this.i++;
      else break;
    }
  }

  value(depth: number): unknown {
    this.ws();
    const c = this.s[this.i];
    if (c === '{') return this.object(depth + 1);
    if (c === '[') return this.array(depth + 1);
    if (c === '"') return this.string();
    if (c === '-' || (c >= '0' && c <= '9')) return this.number();
    for (const [word, v] of [['true', true], ['false', false], ['null', null]] as const) {
      if (this.s.startsWith(word, this.i)) {
        this.i += word.length;
        return v;
      }
    }
    throw malformed(`unexpected ${describe(this.s, this.i)}`);
  }

  private enter(depth: number): void {
    if (depth > MAX_JSON_DEPTH) throw malformed(`nested deeper than ${MAX_JSON_DEPTH} levels`);
  }

  private object(depth: number): Record<string, unknown> {
    this.enter(depth);
    this.i++; // {
    // A null prototype: a member named "__proto__" is a member, not the object's prototype.
    const out = Object.create(null) as Record<string, unknown>;
    this.ws();
    if (this.s[this.i] === '}') {
      this.i++;
      return out;
    }
    for (;;) {
      this.ws();
      if (this.s[this.i] !== '"') throw malformed(`expected a member name, found ${describe(this.s, this.i)}`);
      const key = this.string();
      if (Object.prototype.hasOwnProperty.call(out, key)) throw malformed(`member ${JSON.stringify(key.slice(0, 64))} appears twice in one object`);
      this.ws();
      if (this.s[this.i] !== ':') throw malformed(`expected ':' after a member name, found ${describe(this.s, this.i)}`);
      this.i++;
      out[key] = this.value(depth);
      this.ws();
      const c = this.s[this.i];
      this.i++;
      if (c === '}') return out;
      if (c !== ',') throw malformed(`expected ',' or '}', found ${describe(this.s, this.i - 1)}`);
    }
  }

  private array(depth: number): unknown[] {
    this.enter(depth);
    this.i++; // [
    const out: unknown[] = [];
    this.ws();
    if (this.s[this.i] === ']') {
      this.i++;
      return out;
    }
    for (;;) {
      out.push(this.value(depth));
      this.ws();
      const c = this.s[this.i];
      this.i++;
      if (c === ']') return out;
      if (c !== ',') throw malformed(`expected ',' or ']', found ${describe(this.s, this.i - 1)}`);
    }
  }

  private string(): string {
    STRING_RE.lastIndex = this.i;
    const m = STRING_RE.exec(this.s);
    if (!m) throw malformed(`unterminated or invalid string at offset ${this.i}`);
    this.i += m[0].length;
    return JSON.parse(m[0]) as string;
  }

  private number(): number {
    NUMBER_RE.lastIndex = this.i;
    const m = NUMBER_RE.exec(this.s);
    if (!m) throw malformed(`invalid number at offset ${this.i}`);
    this.i += m[0].length;
    return Number(m[0]);
  }
}
