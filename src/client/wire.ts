// Protocol buffers encoding and decoding for kmsctl's light client, driven by the precompiled
// descriptor (src/client/descriptor.ts) rather than a protobuf library: loading protobufjs/light
// took about half of what was left of a kmsctl call's start-up. It converts as the proto-loader
// stubs of KmsClient do (protobufjs fromObject, then toObject with longs as numbers, enums as
// names and defaults filled in), for the field types the descriptor can hold; a type it does not
// know fails the call by name (test/unit/light-wire.test.ts walks the whole API descriptor).

import { JsonField, lookupType } from './descriptor';

/* eslint-disable-next-line @typescript-eslint/no-explicit-any */
type Obj = Record<string, any>;

interface MessageNode {
  fields?: Record<string, JsonField>;
  values?: Record<string, number>;
}

/** Wire types by scalar type (0 varint, 1 64-bit, 2 length-delimited, 5 32-bit). */
const WIRE: Record<string, number> = {
  int32: 0, int64: 0, uint32: 0, uint64: 0, sint32: 0, sint64: 0, bool: 0,
  fixed64: 1, sfixed64: 1, double: 1,
  string: 2, bytes: 2,
  fixed32: 5, sfixed32: 5, float: 5,
};

export class WireError extends Error {}

/** A field's type as a descriptor node: the message's own nested types first, then outwards (protobuf's scoping). */
function resolve(scope: string, type: string): { name: string; node: MessageNode } {
  const parts = scope.split('.');
  for (let n = parts.length; n >= 0; n--) {
    const name = [...parts.slice(0, n), type].join('.');
    const node = lookupType(name) as MessageNode | undefined;
    if (node && (node.fields || node.values)) return { name, node };
  }
  throw new WireError(`type ${type} (used in ${scope}) is not in the API descriptor`);
}

interface Field {
  name: string;
  id: number;
  type: string;
  repeated: boolean;
  keyType?: string;
  /** Set for message and enum fields. */
  ref?: { name: string; node: MessageNode };
}

const fieldCache = new Map<string, Field[]>();

function fieldsOf(typeName: string): Field[] {
  let fields = fieldCache.get(typeName);
  if (!fields) {
    const node = lookupType(typeName) as MessageNode | undefined;
    if (!node?.fields) throw new WireError(`message ${typeName} is not in the API descriptor`);
    fields = Object.entries(node.fields).map(([name, f]) => {
      if (f.keyType && !(f.keyType in WIRE)) throw new WireError(`${typeName}.${name}: map key type ${f.keyType} is not supported`);
      if (f.type === 'bytes') throw new WireError(`${typeName}.${name}: bytes fields are not supported by kmsctl's codec`);
      const ref = f.type in WIRE ? undefined : resolve(typeName, f.type);
      return { name, id: f.id, type: f.type, repeated: f.rule === 'repeated', ...(f.keyType ? { keyType: f.keyType } : {}), ...(ref ? { ref } : {}) };
    });
    fieldCache.set(typeName, fields);
  }
  return fields;
}

const isEnum = (f: Field) => !!f.ref?.node.values;
const isMessage = (f: Field) => !!f.ref && !f.ref.node.values;

// ---- encoding ----

class Writer {
  private readonly parts: Buffer[] = [];
  length = 0;

  bytes(b: Buffer): void {
    this.parts.push(b);
    this.length += b.length;
  }

  varint(v: bigint): void {
    let x = BigInt.asUintN(64, v);
    const out: number[] = [];
    while (x > 0x7fn) {
      out.push(Number(x & 0x7fn) | 0x80);
      x >>= 7n;
    }
    out.push(Number(x));
    this.bytes(Buffer.from(out));
  }

  tag(id: number, wire: number): void {
    this.varint(BigInt(id * 8 + wire));
  }

  finish(): Buffer {
    return Buffer.concat(this.parts, this.length);
  }
}

function integer(path: string, v: unknown): bigint {
  if (typeof v === 'bigint') return v;
  if (typeof v === 'number') {
    if (!Number.isFinite(v)) throw new WireError(`${path}: ${v} is not an integer`);
    return BigInt(Math.trunc(v));
  }
  if (typeof v === 'string' && /^-?\d+$/.test(v.trim())) return BigInt(v.trim());
  if (typeof v === 'boolean') return v ? 1n : 0n;
  throw new WireError(`${path}: integer expected`);
}

function writeScalar(w: Writer, type: string, path: string, v: unknown): void {
  switch (type) {
    case 'string': {
      const b = Buffer.from(String(v), 'utf8');
      w.varint(BigInt(b.length));
      w.bytes(b);
      return;
    }
    case 'bool':
      w.varint(v ? 1n : 0n);
      return;
    case 'int32':
      w.varint(BigInt.asIntN(32, integer(path, v)));
      return;
    case 'uint32':
      w.varint(BigInt.asUintN(32, integer(path, v)));
      return;
    case 'int64':
    case 'uint64':
      w.varint(integer(path, v));
      return;
    case 'sint32':
    case 'sint64': {
      const n = BigInt.asIntN(64, integer(path, v));
      w.varint(n >= 0n ? n << 1n : ((-n) << 1n) - 1n);
      return;
    }
    case 'double': {
      const b = Buffer.alloc(8);
      b.writeDoubleLE(Number(v));
      w.bytes(b);
      return;
    }
    case 'float': {
      const b = Buffer.alloc(4);
      b.writeFloatLE(Number(v));
      w.bytes(b);
      return;
    }
    case 'fixed32':
    case 'sfixed32': {
      const b = Buffer.alloc(4);
      b.writeUInt32LE(Number(BigInt.asUintN(32, integer(path, v))));
      w.bytes(b);
      return;
    }
    case 'fixed64':
    case 'sfixed64': {
      const b = Buffer.alloc(8);
      b.writeBigUInt64LE(BigInt.asUintN(64, integer(path, v)));
      w.bytes(b);
      return;
    }
    default:
      throw new WireError(`${path}: type ${type} is not supported`);
  }
}

function enumNumber(f: Field, path: string, v: unknown): bigint {
  const values = f.ref!.node.values!;
  if (typeof v === 'string' && v in values) return BigInt(values[v]);
  if (typeof v === 'number' && Number.isInteger(v)) return BigInt(v);
  throw new WireError(`${path}: ${JSON.stringify(v)} is not one of ${Object.keys(values).join(', ')}`);
}

function writeValue(w: Writer, f: Field, path: string, v: unknown): void {
  if (isMessage(f)) {
    if (!v || typeof v !== 'object' || Array.isArray(v)) throw new WireError(`${path}: object expected`);
    const body = encodeMessage(f.ref!.name, v as Obj, path);
    w.tag(f.id, 2);
    w.varint(BigInt(body.length));
    w.bytes(body);
  } else if (isEnum(f)) {
    w.tag(f.id, 0);
    w.varint(enumNumber(f, path, v));
  } else {
    w.tag(f.id, WIRE[f.type]);
    writeScalar(w, f.type, path, v);
  }
}

function encodeMessage(typeName: string, obj: Obj, path: string): Buffer {
  const w = new Writer();
  for (const f of fieldsOf(typeName)) {
    const v = obj[f.name];
    if (v === null || v === undefined) continue;
    const at = `${path}.${f.name}`;
    if (f.keyType) {
      if (typeof v !== 'object' || Array.isArray(v)) throw new WireError(`${at}: object expected`);
      for (const [k, x] of Object.entries(v as Obj)) {
        const entry = new Writer();
        entry.tag(1, WIRE[f.keyType]);
        writeScalar(entry, f.keyType, at, f.keyType === 'bool' ? k === 'true' : k);
        writeValue(entry, { ...f, id: 2, keyType: undefined, repeated: false }, `${at}.${k}`, x);
        const body = entry.finish();
        w.tag(f.id, 2);
        w.varint(BigInt(body.length));
        w.bytes(body);
      }
    } else if (f.repeated) {
      if (!Array.isArray(v)) throw new WireError(`${at}: array expected`);
      v.forEach((x, i) => writeValue(w, f, `${at}[${i}]`, x));
    } else {
      writeValue(w, f, at, v);
    }
  }
  return w.finish();
}

/** A request object (as protobufjs fromObject takes it) as the bytes of message `typeName` of kms.v1. */
export function encode(typeName: string, obj: Obj): Buffer {
  return encodeMessage(typeName, obj, typeName);
}

// ---- decoding ----

class Reader {
  pos = 0;
  constructor(
    private readonly buf: Buffer,
    readonly end = buf.length,
  ) {}

  varint(): bigint {
    let result = 0n;
    for (let shift = 0n; shift < 70n; shift += 7n) {
      if (this.pos >= this.end) throw new WireError('truncated varint');
      const b = this.buf[this.pos++];
      result |= BigInt(b & 0x7f) << shift;
      if (b < 0x80) return BigInt.asUintN(64, result);
    }
    throw new WireError('varint too long');
  }

  take(n: number): Buffer {
    if (n < 0 || this.pos + n > this.end) throw new WireError('truncated field');
    const b = this.buf.subarray(this.pos, this.pos + n);
    this.pos += n;
    return b;
  }

  skip(wire: number): void {
    if (wire === 0) this.varint();
    else if (wire === 1) this.take(8);
    else if (wire === 2) this.take(Number(this.varint()));
    else if (wire === 5) this.take(4);
    else throw new WireError(`wire type ${wire} is not supported`);
  }
}

function readScalar(r: Reader, type: string): unknown {
  switch (type) {
    case 'string':
      return r.take(Number(r.varint())).toString('utf8');
    case 'bool':
      return r.varint() !== 0n;
    case 'int32':
      return Number(BigInt.asIntN(32, r.varint()));
    case 'uint32':
      return Number(BigInt.asUintN(32, r.varint()));
    case 'int64':
      return Number(BigInt.asIntN(64, r.varint()));
    case 'uint64':
      return Number(r.varint());
    case 'sint32':
    case 'sint64': {
      const n = r.varint();
      return Number(n & 1n ? -((n + 1n) >> 1n) : n >> 1n);
    }
    case 'double':
      return r.take(8).readDoubleLE(0);
    case 'float':
      return r.take(4).readFloatLE(0);
    case 'fixed32':
      return r.take(4).readUInt32LE(0);
    case 'sfixed32':
      return r.take(4).readInt32LE(0);
    case 'fixed64':
      return Number(r.take(8).readBigUInt64LE(0));
    case 'sfixed64':
      return Number(r.take(8).readBigInt64LE(0));
    default:
      throw new WireError(`type ${type} is not supported`);
  }
}

function enumName(f: Field, n: number): string | number {
  const entry = Object.entries(f.ref!.node.values!).find(([, v]) => v === n);
  return entry ? entry[0] : n;
}

function scalarDefault(f: Field): unknown {
  if (isMessage(f)) return null;
  if (isEnum(f)) return Object.keys(f.ref!.node.values!)[0];
  if (f.type === 'string') return '';
  if (f.type === 'bool') return false;
  return 0;
}

function readValue(r: Reader, f: Field): unknown {
  if (isMessage(f)) {
    const len = Number(r.varint());
    const body = r.take(len);
    return decodeMessage(f.ref!.name, body);
  }
  if (isEnum(f)) return enumName(f, Number(BigInt.asIntN(32, r.varint())));
  return readScalar(r, f.type);
}

function decodeMessage(typeName: string, buf: Buffer): Obj {
  const fields = fieldsOf(typeName);
  const byId = new Map(fields.map((f) => [f.id, f]));
  // protobufjs's toObject order: repeated fields, then maps, then the others, each in declaration order.
  const obj: Obj = {};
  for (const f of fields) if (f.repeated && !f.keyType) obj[f.name] = [];
  for (const f of fields) if (f.keyType) obj[f.name] = {};
  for (const f of fields) if (!f.repeated && !f.keyType) obj[f.name] = scalarDefault(f);
  const r = new Reader(buf);
  while (r.pos < r.end) {
    const tag = Number(r.varint());
    const id = tag >>> 3;
    const wire = tag & 7;
    const f = byId.get(id);
    if (!f) {
      r.skip(wire);
      continue;
    }
    if (f.keyType) {
      const entry = new Reader(r.take(Number(r.varint())));
      let key: unknown = scalarDefault({ ...f, type: f.keyType, ref: undefined });
      const valueField: Field = { ...f, id: 2, keyType: undefined, repeated: false };
      let value: unknown = scalarDefault(valueField);
      while (entry.pos < entry.end) {
        const t = Number(entry.varint());
        if (t >>> 3 === 1) key = readScalar(entry, f.keyType);
        else if (t >>> 3 === 2) value = readValue(entry, valueField);
        else entry.skip(t & 7);
      }
      obj[f.name][String(key)] = value;
    } else if (f.repeated) {
      if (wire === 2 && !isMessage(f) && f.type !== 'string') {
        // Packed numbers (proto3's default for repeated scalars).
        const packed = new Reader(r.take(Number(r.varint())));
        while (packed.pos < packed.end) obj[f.name].push(readValue(packed, f));
      } else {
        obj[f.name].push(readValue(r, f));
      }
    } else {
      obj[f.name] = readValue(r, f);
    }
  }
  return obj;
}

/** The bytes of message `typeName` of kms.v1 as the object KmsClient's stubs give for them. */
export function decode(typeName: string, buf: Buffer): Obj {
  return decodeMessage(typeName, buf);
}
