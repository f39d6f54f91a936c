// kmsd configuration (src/config.ts): flags > environment > config file > defaults, each setting
// validated in one place with a one-line ConfigError.

import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { ConfigError, isLoopback, loadConfig, parseListen } from '../../src/config';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'kmsd-config-'));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

function configFile(content: unknown): string {
  const f = path.join(tmp, `config-${Math.random().toString(36).slice(2)}.json`);
  fs.writeFileSync(f, typeof content === 'string' ? content : JSON.stringify(content));
  return f;
}

function configError(argv: string[], env: NodeJS.ProcessEnv = {}): string {
  try {
    loadConfig(argv, env);
  } catch (e) {
    expect(e).toBeInstanceOf(ConfigError);
    const msg = (e as Error).message;
    expect(msg).not.toContain('\n');
    return msg;
  }
  throw new Error(`loadConfig(${JSON.stringify(argv)}, ${JSON.stringify(env)}) did not throw`);
}

describe('defaults', () => {
  it('are the documented ones', () => {
    const c = loadConfig([], {});
    expect(c).toMatchObject({
      listen: '127.0.0.1:50051',
      dataDir: path.resolve('./var'),
      importTokenTtlSeconds: 86400,
      wrappingKeyPoolSize: 2,
      schedulerIntervalMs: 1000,
      pendingWindowDaySeconds: 86400,
      minRotationIntervalSeconds: 7 * 86400,
      useNativeAddon: true,
      logLevel: 'info',
    });
    expect(c.pkcs11Module).toBeUndefined();
    expect(c.tokenLabel).toBeUndefined();
    expect(c.pinFile).toBeUndefined();
    expect(c.tls).toBeUndefined();
  });
});

describe('precedence', () => {
  it('flags over environment over config file', () => {
    const file = configFile({ listen: '127.0.0.1:3001', dataDir: '/srv/from-file', schedulerIntervalMs: 300, logLevel: 'warn' });
    const fromFile = loadConfig(['--config', file], {});
    expect(fromFile).toMatchObject({ listen: '127.0.0.1:3001', dataDir: '/srv/from-file', schedulerIntervalMs: 300, logLevel: 'warn' });
    const fromEnv = loadConfig(['--config', file], { KMS_LISTEN: '127.0.0.1:3002', KMS_DATA_DIR: '/srv/from-env', KMS_SCHEDULER_INTERVAL_MS: '400' });
    expect(fromEnv).toMatchObject({ listen: '127.0.0.1:3002', dataDir: '/srv/from-env', schedulerIntervalMs: 400 });
    const fromFlag = loadConfig(['--config', file, '--listen', '127.0.0.1:3003', '--data-dir=/srv/from-flag'], { KMS_LISTEN: '127.0.0.1:3002', KMS_DATA_DIR: '/srv/from-env' });
    expect(fromFlag).toMatchObject({ listen: '127.0.0.1:3003', dataDir: '/srv/from-flag' });
    // KMS_CONFIG names the file when --config does not.
    expect(loadConfig([], { KMS_CONFIG: file }).listen).toBe('127.0.0.1:3001');
  });

  it('resolves a relative data directory', () => {
    expect(loadConfig(['--data-dir', 'rel/dir'], {}).dataDir).toBe(path.resolve('rel/dir'));
  });

  it('treats an empty environment variable as unset', () => {
    const c = loadConfig([], {
      KMS_LISTEN: '',
      KMS_DATA_DIR: '',
      KMS_SCHEDULER_INTERVAL_MS: '',
      KMS_PENDING_WINDOW_DAY_SECONDS: '',
      KMS_MIN_ROTATION_INTERVAL_SECONDS: '',
      KMS_IMPORT_TOKEN_TTL_SECONDS: '',
      KMS_WRAPPING_KEY_POOL_SIZE: '',
      KMS_NATIVE: '',
      KMS_LOG_LEVEL: '',
    });
    expect(c).toMatchObject({ listen: '127.0.0.1:50051', schedulerIntervalMs: 1000, pendingWindowDaySeconds: 86400, useNativeAddon: true, logLevel: 'info' });
  });
});

describe('flags', () => {
  it('refuse unknown arguments, missing and empty values', () => {
    expect(configError(['--colour', 'blue'])).toBe('unknown argument "--colour"');
    expect(configError(['positional'])).toBe('unknown argument "positional"');
    expect(configError(['--listen'])).toBe('--listen needs a value');
    expect(configError(['--listen='])).toBe('--listen needs a value');
  });

  it('a config file that cannot be read or parsed is one line', () => {
    expect(configError(['--config', path.join(tmp, 'missing.json')])).toMatch(/^cannot read config file .*missing\.json: /);
    expect(configError(['--config', configFile('{not json')])).toMatch(/^cannot read config file /);
  });
});

describe('production token settings', () => {
  it('need all three of module, label and PIN file, or none', () => {
    fs.writeFileSync(path.join(tmp, 'p11.so'), '');
    const p11 = path.join(tmp, 'p11.so');
    const all = loadConfig(['--pkcs11-module', p11, '--token-label', 'prod', '--pin-file', '/etc/kmsd/pin'], {});
    expect(all).toMatchObject({ pkcs11Module: p11, tokenLabel: 'prod', pinFile: '/etc/kmsd/pin' });
    const fromEnv = loadConfig([], { KMS_PKCS11_MODULE: p11, KMS_TOKEN_LABEL: 'prod', KMS_PIN_FILE: '/etc/kmsd/pin' });
    expect(fromEnv.pkcs11Module).toBe(p11);
    // The module is checked before the token is opened; a label longer than CK_TOKEN_INFO holds can never match.
    expect(configError(['--pkcs11-module', '/lib/no-such-p11.so', '--token-label', 'prod', '--pin-file', '/p'])).toMatch(/--pkcs11-module: cannot load PKCS#11 module \/lib\/no-such-p11\.so: no such file/);
    expect(configError(['--pkcs11-module', p11, '--token-label', 'x'.repeat(33), '--pin-file', '/p'])).toMatch(/--token-label must be at most 32 bytes/);
    const rule = 'an existing token needs all of --pkcs11-module, --token-label and --pin-file (or none of them for the development token)';
    expect(configError(['--pkcs11-module', '/lib/p11.so'])).toBe(rule);
    expect(configError(['--token-label', 'prod', '--pin-file', '/p'])).toBe(rule);
    expect(configError([], { KMS_PIN_FILE: '/p' })).toBe(rule);
  });
});

describe('listen address and TLS', () => {
  it('parseListen reads HOST:PORT, [IPv6]:PORT and refuses the rest', () => {
    expect(parseListen('127.0.0.1:50051')).toEqual({ host: '127.0.0.1', port: 50051 });
    expect(parseListen('localhost:0')).toEqual({ host: 'localhost', port: 0 });
    expect(parseListen('[::1]:443')).toEqual({ host: '::1', port: 443 });
    expect(parseListen('127.0.0.1:65535').port).toBe(65535);
    for (const bad of ['127.0.0.1', ':50051', '127.0.0.1:', '127.0.0.1:abc', '127.0.0.1:123456', '::1:50051', 'host name:1']) {
      expect(() => parseListen(bad), bad).toThrow(ConfigError);
    }
    expect(() => parseListen('127.0.0.1:65536')).toThrow('--listen port must be 0..65535 (got 65536)');
  });

  it('isLoopback is true only for 127/8, ::1 and localhost', () => {
    for (const h of ['127.0.0.1', '127.1.2.3', '::1', 'localhost']) expect(isLoopback(h), h).toBe(true);
    for (const h of ['0.0.0.0', '::', '10.0.0.1', '192.168.1.1', 'example.com', '127.0.0.1.example.com', '128.0.0.1']) expect(isLoopback(h), h).toBe(false);
  });

  it('refuses a non-loopback address without TLS, accepts it with TLS', () => {
    expect(configError(['--listen', '0.0.0.0:50051'])).toBe('refusing to listen on non-loopback address 0.0.0.0:50051 without TLS (give --tls-cert and --tls-key)');
    expect(configError([], { KMS_LISTEN: '[::]:50051' })).toMatch(/^refusing to listen on non-loopback address \[::\]:50051 without TLS/);
    const c = loadConfig(['--listen', '0.0.0.0:50051', '--tls-cert', '/c.pem', '--tls-key', '/k.pem'], {});
    expect(c.tls).toEqual({ certFile: '/c.pem', keyFile: '/k.pem', clientCaFile: undefined });
    const m = loadConfig(['--tls-cert', '/c.pem', '--tls-key', '/k.pem', '--tls-client-ca', '/ca.pem'], {});
    expect(m.tls?.clientCaFile).toBe('/ca.pem');
    expect(configError(['--tls-cert', '/c.pem'])).toBe('TLS needs both --tls-cert and --tls-key');
    expect(configError(['--tls-client-ca', '/ca.pem'])).toBe('TLS needs both --tls-cert and --tls-key');
  });
});

describe('numeric and boolean settings', () => {
  it('hold each to its range, naming it', () => {
    const cases: [NodeJS.ProcessEnv, RegExp][] = [
      [{ KMS_SCHEDULER_INTERVAL_MS: '49' }, /^schedulerIntervalMs must be an integer from 50 to 3600000 \(got 49\)$/],
      [{ KMS_SCHEDULER_INTERVAL_MS: 'fast' }, /^schedulerIntervalMs must be an integer/],
      [{ KMS_SCHEDULER_INTERVAL_MS: '1.5' }, /^schedulerIntervalMs /],
      [{ KMS_PENDING_WINDOW_DAY_SECONDS: '0' }, /^pendingWindowDaySeconds must be an integer from 1 to 86400 \(got 0\)$/],
      [{ KMS_PENDING_WINDOW_DAY_SECONDS: '86401' }, /^pendingWindowDaySeconds /],
      [{ KMS_MIN_ROTATION_INTERVAL_SECONDS: '0' }, /^minRotationIntervalSeconds /],
      [{ KMS_MIN_ROTATION_INTERVAL_SECONDS: String(7 * 86400 + 1) }, /^minRotationIntervalSeconds /],
      [{ KMS_IMPORT_TOKEN_TTL_SECONDS: '0' }, /^importTokenTtlSeconds /],
      [{ KMS_WRAPPING_KEY_POOL_SIZE: '65' }, /^wrappingKeyPoolSize /],
      [{ KMS_NATIVE: 'yes' }, /^KMS_NATIVE must be 0 or 1 \(got yes\)$/],
      [{ KMS_ALLOW_HOST_ASSISTED_UNWRAP: '2' }, /^allowHostAssistedUnwrap must be 0 or 1/],
      [{ KMS_LOG_LEVEL: 'verbose' }, /^logLevel must be one of .*info.* \(got verbose\)$/],
    ];
    for (const [env, message] of cases) expect(configError([], env), JSON.stringify(env)).toMatch(message);
  });

  it('accept the test knobs at their limits', () => {
    const c = loadConfig([], {
      KMS_SCHEDULER_INTERVAL_MS: '50',
      KMS_PENDING_WINDOW_DAY_SECONDS: '1',
      KMS_MIN_ROTATION_INTERVAL_SECONDS: '1',
      KMS_IMPORT_TOKEN_TTL_SECONDS: '1',
      KMS_WRAPPING_KEY_POOL_SIZE: '0',
      KMS_NATIVE: '0',
      KMS_ALLOW_HOST_ASSISTED_UNWRAP: 'true',
      KMS_LOG_LEVEL: 'debug',
    });
    expect(c).toMatchObject({
      schedulerIntervalMs: 50,
      pendingWindowDaySeconds: 1,
      minRotationIntervalSeconds: 1,
      importTokenTtlSeconds: 1,
      wrappingKeyPoolSize: 0,
      useNativeAddon: false,
      allowHostAssistedUnwrap: true,
      logLevel: 'debug',
    });
    expect(loadConfig([], { KMS_NATIVE: '1' }).useNativeAddon).toBe(true);
    expect(loadConfig(['--config', configFile({ useNativeAddon: false, pendingWindowDaySeconds: 2 })], {})).toMatchObject({ useNativeAddon: false, pendingWindowDaySeconds: 2 });
  });
});

describe('one reader of the environment', () => {
  it('no file under src/ but src/config.ts mentions process.env', () => {
    const src = path.resolve(__dirname, '..', '..', 'src');
    const offenders: string[] = [];
    const walk = (d: string): void => {
      for (const e of fs.readdirSync(d, { withFileTypes: true })) {
        const p = path.join(d, e.name);
        if (e.isDirectory()) walk(p);
        else if (p.endsWith('.ts') && p !== path.join(src, 'config.ts') && fs.readFileSync(p, 'utf8').includes('process.env')) offenders.push(path.relative(src, p));
      }
    };
    walk(src);
    expect(offenders).toEqual([]);
  });
});

describe('disabled mechanisms (KMS_DISABLE_MECHANISMS / disableMechanisms)', () => {
  it('default to none, and read comma-separated names from the environment or the file, once each', () => {
    expect(loadConfig([], {}).disabledMechanisms).toEqual([]);
    expect(loadConfig([], { KMS_DISABLE_MECHANISMS: 'CKM_AES_GCM, CKM_AES_ECB,CKM_AES_GCM' }).disabledMechanisms).toEqual(['CKM_AES_GCM', 'CKM_AES_ECB']);
    expect(loadConfig(['--config', configFile({ disableMechanisms: 'CKM_AES_KEY_WRAP_PAD' })], {}).disabledMechanisms).toEqual(['CKM_AES_KEY_WRAP_PAD']);
  });

  it('refuse a name kmsd cannot do without, naming it and the ones it can', () => {
    const msg = configError([], { KMS_DISABLE_MECHANISMS: 'CKM_AES_GCM,CKM_SHA256_HMAC' });
    expect(msg).toMatch(/KMS_DISABLE_MECHANISMS/);
    expect(msg).toMatch(/"CKM_SHA256_HMAC" is not a mechanism kmsd can be told not to use/);
    expect(msg).toMatch(/CKM_AES_GCM, CKM_AES_ECB, CKM_AES_KEY_WRAP_PAD, CKM_RSA_PKCS, CKM_RSA_PKCS_OAEP, CKM_RSA_X_509/);
    expect(configError(['--config', configFile({ disableMechanisms: ['CKM_AES_GCM'] })])).toMatch(/disableMechanisms must be a string/);
  });
});
