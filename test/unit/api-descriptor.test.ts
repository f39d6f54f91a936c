// proto/kms/v1/api.json (what kmsctl reads instead of the .proto files) is in step with the .proto
// files, and the per-action subsets kmsctl's client builds hold every type the action needs, the
// same as the whole API defines them.

import fs from 'node:fs';
import path from 'node:path';
import * as protobuf from 'protobufjs/light';
import { describe, expect, it } from 'vitest';
import { DESCRIPTOR_FILE, SERVICE_NAMES, apiDescriptorJson, buildApiDescriptor, descriptorSubset, findProtoDir, serviceMethods } from '../../src/client/descriptor';

describe('the precompiled API descriptor', () => {
  it('matches the .proto files (regenerate: npx tsc -p tsconfig.json && node dist/scripts/gen-api-descriptor.js)', () => {
    const stored = JSON.parse(fs.readFileSync(path.join(findProtoDir(), DESCRIPTOR_FILE), 'utf8'));
    expect(stored).toEqual(buildApiDescriptor());
  });

  it('lists every RPC of the three services', () => {
    const counts = SERVICE_NAMES.map((s) => Object.keys(serviceMethods(s)).length);
    for (const n of counts) expect(n).toBeGreaterThan(0);
    expect(serviceMethods('KeyManagementService')).toHaveProperty('Encrypt');
    expect(serviceMethods('CeremonyService')).toHaveProperty('CreateProposal');
    expect(serviceMethods('AuditService')).toHaveProperty('ExportAudit');
  });

  it("each action's subset resolves on its own and defines its types as the whole API does", () => {
    const whole = protobuf.Root.fromJSON(apiDescriptorJson() as protobuf.INamespace);
    whole.resolveAll();
    for (const service of SERVICE_NAMES) {
      for (const [action, m] of Object.entries(serviceMethods(service))) {
        const sub = protobuf.Root.fromJSON(descriptorSubset([m.requestType, m.responseType]) as protobuf.INamespace);
        expect(() => sub.resolveAll(), action).not.toThrow();
        for (const t of [m.requestType, m.responseType]) {
          expect(sub.lookupType(`kms.v1.${t}`).toJSON(), `${action} ${t}`).toEqual(whole.lookupType(`kms.v1.${t}`).toJSON());
        }
      }
    }
  });
});
