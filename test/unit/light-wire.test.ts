// kmsctl's protobuf codec (src/client/wire.ts) against protobufjs on the whole API descriptor: for
// the request and response message of every action, a message with every field set (nested
// messages, lists, maps, negative and 64-bit integers) encodes to bytes protobufjs reads back the
// same, and decodes to the object proto-loader's conversion gives (defaults filled in), both ways.

import * as protobuf from 'protobufjs/light';
import { describe, expect, it } from 'vitest';
import { SERVICE_NAMES, apiDescriptorJson, serviceMethods } from '../../src/client/descriptor';
import { decode, encode } from '../../src/client/wire';

/** src/api/proto.ts's LOADER_OPTIONS for decoding. */
const TO_OBJECT: protobuf.IConversionOptions = { longs: Number, enums: String, defaults: true, oneofs: true };

const whole = protobuf.Root.fromJSON(apiDescriptorJson() as protobuf.INamespace);
whole.resolveAll();

/** A value for every field of `type`, nested messages down to `depth`. */
function sample(type: protobuf.Type, depth: number): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const f of type.fieldsArray) {
    const one = (i: number): unknown => {
      if (f.resolvedType instanceof protobuf.Type) return depth > 0 ? sample(f.resolvedType, depth - 1) : undefined;
      if (f.resolvedType instanceof protobuf.Enum) return Object.keys(f.resolvedType.values)[i % Object.keys(f.resolvedType.values).length];
      switch (f.type) {
        case 'string':
          return `${f.name}-${i}-ü`;
        case 'bool':
          return true;
        case 'double':
        case 'float':
          return -1.5 * (i + 1);
        case 'int64':
        case 'sint64':
        case 'sfixed64':
          return -(2 ** 40) - i;
        case 'uint64':
        case 'fixed64':
          return 2 ** 40 + i;
        case 'int32':
        case 'sint32':
        case 'sfixed32':
          return -7 - i;
        default:
          return 7 + i;
      }
    };
    if (f.map) out[f.name] = { a: one(0), 'b c': one(1) };
    else if (f.repeated) out[f.name] = [one(0), one(1)].filter((x) => x !== undefined);
    else if (one(0) !== undefined) out[f.name] = one(0);
  }
  return out;
}

const types = [...new Set(SERVICE_NAMES.flatMap((s) => Object.values(serviceMethods(s)).flatMap((m) => [m.requestType, m.responseType])))];

describe("kmsctl's protobuf codec", () => {
  it('covers every request and response message of the API', () => {
    expect(types.length).toBeGreaterThan(50);
    for (const t of types) {
      expect(() => encode(t, {}), t).not.toThrow();
      expect(decode(t, Buffer.alloc(0)), t).toEqual(whole.lookupType(`kms.v1.${t}`).toObject(whole.lookupType(`kms.v1.${t}`).create({}), TO_OBJECT));
    }
  });

  it('encodes and decodes as protobufjs does, both ways, for a message with every field set', () => {
    for (const t of types) {
      const type = whole.lookupType(`kms.v1.${t}`);
      const obj = sample(type, 2);
      const theirs = Buffer.from(type.encode(type.fromObject(obj)).finish());
      const expected = type.toObject(type.decode(theirs), TO_OBJECT);
      expect(decode(t, theirs), `decode ${t}`).toEqual(expected);
      expect(type.toObject(type.decode(encode(t, obj)), TO_OBJECT), `encode ${t}`).toEqual(expected);
    }
  });

  it('refuses a value of the wrong shape by its field', () => {
    expect(() => encode('EncryptRequest', { EncryptionContext: 'x' })).toThrow(/EncryptRequest\.EncryptionContext: object expected/);
    expect(() => encode('EncryptBatchRequest', { Items: {} })).toThrow(/EncryptBatchRequest\.Items: array expected/);
    expect(() => encode('EncryptBatchRequest', { Items: ['x'] })).toThrow(/EncryptBatchRequest\.Items\[0\]: object expected/);
  });

  it('skips fields it does not know and refuses a truncated message', () => {
    // Field 1000 (a varint), then nothing the message defines.
    const unknown = Buffer.from([0xc0, 0x3e, 0x01]);
    expect(decode('ListKeysResponse', unknown)).toEqual(whole.lookupType('kms.v1.ListKeysResponse').toObject(whole.lookupType('kms.v1.ListKeysResponse').create({}), TO_OBJECT));
    const full = encode('KeyIdRequest', { KeyId: 'alias/some-key' });
    expect(() => decode('KeyIdRequest', full.subarray(0, full.length - 3))).toThrow(/truncated/);
  });
});
