// kmsctl loads only what the action needs (its start-up time is measured, not asserted: README):
// --help and usage errors load no gRPC or protobuf library at all; nor does a unary call, which
// speaks gRPC over node:http2 and encodes messages from the precompiled descriptor itself: it never
// loads @grpc/grpc-js, @grpc/proto-loader or protobufjs.

import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Kmsd, ROOT, startKmsd } from '../helpers/daemon';

/** Runs dist's kmsctl with these arguments; returns its exit code, output and every module it loaded. */
function kmsctlModules(args: string[]): { code: number | null; stdout: string; stderr: string; modules: string[] } {
  const script = `
    const Module = require('module');
    const loaded = new Set();
    const load = Module._load;
    Module._load = function (request, parent, isMain) {
      const r = load.apply(this, arguments);
      try { loaded.add(Module._resolveFilename(request, parent, isMain)); } catch { loaded.add(request); }
      return r;
    };
    const exit = process.exit;
    process.exit = (code) => { require('fs').writeSync(3, JSON.stringify([...loaded])); exit(code); };
    process.argv = [process.argv[0], 'kmsctl', ...JSON.parse(process.env.KMSCTL_ARGS)];
    require(${JSON.stringify(path.join(ROOT, 'dist', 'src', 'cli', 'kmsctl.js'))}).main();
  `;
  const r = spawnSync(process.execPath, ['-e', script], {
    encoding: 'utf8',
    env: { ...process.env, KMSCTL_ARGS: JSON.stringify(args) },
    stdio: ['ignore', 'pipe', 'pipe', 'pipe'],
    timeout: 60_000,
  });
  const modules = JSON.parse((r.output[3] as unknown as string) || '[]') as string[];
  return { code: r.status, stdout: r.stdout, stderr: r.stderr, modules };
}

const uses = (modules: string[], pkg: string) => modules.some((m) => m.includes(`${path.sep}node_modules${path.sep}${pkg}${path.sep}`));

let k: Kmsd;

beforeAll(async () => {
  k = await startKmsd();
});

afterAll(async () => {
  await k?.stop();
});

describe('kmsctl start-up', () => {
  it('--help and a usage error load no gRPC or protobuf library', () => {
    for (const args of [['--help'], ['CreateKey', '--NoSuchParam', 'x'], ['NoSuchAction']]) {
      const r = kmsctlModules(args);
      expect(r.code, r.stderr).toBe(args[0] === '--help' ? 0 : 2);
      expect(r.modules.length, r.stderr).toBeGreaterThan(0);
      for (const pkg of ['@grpc/grpc-js', '@grpc/proto-loader', 'protobufjs']) expect(uses(r.modules, pkg), `${args.join(' ')} loaded ${pkg}`).toBe(false);
    }
  });

  it('a call loads no gRPC or protobuf library, and answers as before', () => {
    const r = kmsctlModules(['--endpoint', k.endpoint, 'CreateKey', '--ProtectionLevel', 'HSM', '--Description', 'startup']);
    expect(r.code, r.stderr).toBe(0);
    const meta = JSON.parse(r.stdout).KeyMetadata;
    expect(meta).toMatchObject({ Description: 'startup', ProtectionLevel: 'HSM', KeyState: 'Enabled' });
    expect(r.modules.length, r.stderr).toBeGreaterThan(0);
    for (const pkg of ['@grpc/grpc-js', '@grpc/proto-loader', 'protobufjs']) expect(uses(r.modules, pkg), `a unary call loaded ${pkg}`).toBe(false);
    // An API error keeps its shape: {Code, Message, RequestId} on stderr, exit 1.
    const bad = kmsctlModules(['--endpoint', k.endpoint, 'DescribeKey', '--KeyId', 'alias/none']);
    expect(bad.code).toBe(1);
    expect(JSON.parse(bad.stderr)).toMatchObject({ Code: 'Forbidden.AliasNotFound', RequestId: expect.any(String) });
    for (const pkg of ['@grpc/grpc-js', '@grpc/proto-loader', 'protobufjs']) expect(uses(bad.modules, pkg), `a failed call loaded ${pkg}`).toBe(false);
  });
});
