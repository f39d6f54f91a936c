// The HTTP listener's settings in src/config.ts: --http-listen / KMS_HTTP_LISTEN, the loopback rule
// it shares with gRPC, and the region and account that go into ARNs.

import { describe, expect, it } from 'vitest';
import { ConfigError, loadConfig } from '../../src/config';

function configError(argv: string[], env: NodeJS.ProcessEnv = {}): string {
  try {
    loadConfig(argv, env);
  } catch (e) {
    expect(e).toBeInstanceOf(ConfigError);
    return (e as Error).message;
  }
  throw new Error(`loadConfig(${JSON.stringify(argv)}) did not throw`);
}

describe('--http-listen', () => {
  it('is off unless given; the flag wins over KMS_HTTP_LISTEN', () => {
    expect(loadConfig([], {}).httpListen).toBeUndefined();
    expect(loadConfig([], { KMS_HTTP_LISTEN: '127.0.0.1:8080' }).httpListen).toBe('127.0.0.1:8080');
    expect(loadConfig(['--http-listen', '127.0.0.1:9090'], { KMS_HTTP_LISTEN: '127.0.0.1:8080' }).httpListen).toBe('127.0.0.1:9090');
  });

  it('must be HOST:PORT, named as --http-listen', () => {
    expect(configError(['--http-listen', 'nonsense'])).toBe('--http-listen must be HOST:PORT (got "nonsense")');
    expect(configError(['--http-listen', '127.0.0.1:70000'])).toBe('--http-listen port must be 0..65535 (got 70000)');
  });

  it('plain HTTP only on loopback; any address with TLS', () => {
    expect(configError(['--http-listen', '0.0.0.0:8080'])).toContain('refusing to serve HTTP on non-loopback address 0.0.0.0:8080 without TLS');
    expect(loadConfig(['--http-listen', '[::1]:8080'], {}).httpListen).toBe('[::1]:8080');
    const c = loadConfig(['--http-listen', '0.0.0.0:8443', '--tls-cert', 'c.pem', '--tls-key', 'k.pem'], {});
    expect(c.httpListen).toBe('0.0.0.0:8443');
  });
});

describe('region and account', () => {
  it('default to local and kmsd; KMS_REGION and KMS_ACCOUNT set them; bad values are refused by name', () => {
    expect(loadConfig([], {})).toMatchObject({ region: 'local', account: 'kmsd' });
    expect(loadConfig([], { KMS_REGION: 'cn-hangzhou', KMS_ACCOUNT: '123456789012' })).toMatchObject({ region: 'cn-hangzhou', account: '123456789012' });
    expect(configError([], { KMS_REGION: 'Bad Region' })).toContain('region must be lower-case letters');
    expect(configError([], { KMS_ACCOUNT: 'a:b' })).toContain('account must be lower-case letters');
  });
});

describe('--aws-region', () => {
  it('is unset (any region) unless given; the flag wins over KMS_AWS_REGION; a bad value is refused by name', () => {
    expect(loadConfig([], {}).awsRegion).toBeUndefined();
    expect(loadConfig([], { KMS_AWS_REGION: 'eu-west-1' }).awsRegion).toBe('eu-west-1');
    expect(loadConfig(['--aws-region', 'us-east-1'], { KMS_AWS_REGION: 'eu-west-1' }).awsRegion).toBe('us-east-1');
    expect(configError(['--aws-region', 'US East'])).toContain('awsRegion must be lower-case letters');
  });
});
