// The web console in a real Chromium against a real kmsd on a SoftHSM token: the seed's console flow
// end to end (an EXTERNAL HSM key, import parameters taken from the browser's downloads and checked
// with openssl, key material wrapped with the seed's openssl command and uploaded through the page,
// checked by decrypting a kmsctl ciphertext offline, deleted and imported again), the errors a user
// meets shown in the page, a 2-of-3 ceremony run from the page, the audit chain verified, and the
// security headers of every console answer. Screenshots of each step go to test-results/console/.

import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Page } from 'playwright-core';
import { ROOT, makeTempDir } from '../helpers/daemon';
import { HttpKmsd, rawRequest, startHttpKmsd } from '../helpers/http';
import { Browser, launchChromium } from '../helpers/browser';
import { CustodianKeyFiles, custodianKeys, opensslSign, run } from '../helpers/ceremony';
import { offlineDecrypt } from '../helpers/offline';

const SHOTS = path.join(ROOT, 'test-results', 'console');

let k: HttpKmsd;
let dir: string;
let browser: Browser;
let page: Page;
let viewer: { AccessKeyId: string; AccessKeySecret: string };
/** What the browser reported against the page's Content-Security-Policy. */
const cspViolations: string[] = [];

const policy = {
  version: 1,
  admins: ['local-admin', 'anonymous'],
  custodians: ['local-admin', 'anonymous'],
  grants: [
    { id: 'admins-use-keys', principals: ['local-admin', 'anonymous'], actions: ['Encrypt', 'Decrypt', 'GenerateDataKey*', 'ReEncrypt'], keys: ['*'] },
    { id: 'viewer-list', principals: ['viewer'], actions: ['ListKeys'], keys: ['*'] },
  ],
};

beforeAll(async () => {
  if (!fs.existsSync(path.join(ROOT, 'dist', 'console', 'index.html'))) throw new Error('dist/console is not built: run scripts/setup.sh (or npm run build)');
  dir = makeTempDir('kmsd-console-');
  fs.mkdirSync(SHOTS, { recursive: true });
  const policyFile = path.join(dir, 'policy.json');
  fs.writeFileSync(policyFile, JSON.stringify(policy));
  k = await startHttpKmsd({ args: ['--policy', policyFile] });
  const r = k.kmsctl(['CreateAccessKey', '--Principal', 'viewer']);
  expect(r.code, r.stderr).toBe(0);
  viewer = r.json;
  browser = await launchChromium(dir);
  page = await browser.context.newPage();
  // A step that does not happen fails in seconds, not at the suite's timeout.
  page.setDefaultTimeout(15_000);
  page.on('console', (m) => {
    if (/Content.Security.Policy/i.test(m.text())) cspViolations.push(m.text());
  });
  page.on('pageerror', (e) => cspViolations.push(`page error: ${e.message}`));
});

afterAll(async () => {
  await browser?.close();
  await k?.stop();
  if (dir) fs.rmSync(dir, { recursive: true, force: true });
});

const url = (hash = '') => `http://${k.httpEndpoint}/console/${hash}`;

async function shot(name: string, p: Page = page, fullPage = true): Promise<void> {
  await p.screenshot({ path: path.join(SHOTS, `${name}.png`), fullPage });
}

/** Waits until no call is running (the progress line is empty). */
/**
 * The page's globals, for functions that run in the page (the tests are typed for Node, not the
 * DOM). Functions, not strings: the console's CSP refuses eval, and Playwright evals strings.
 */
// eslint-disable-next-line @typescript-eslint/no-explicit-any
type Web = { document: any; sessionStorage: any; localStorage: any };

async function settled(p: Page = page): Promise<void> {
  await p.waitForFunction(() => {
    const d = (globalThis as unknown as Web).document;
    return d.getElementById('progress').textContent === '' && !d.getElementById('view').hasAttribute('aria-busy');
  });
}

async function signIn(cred: { AccessKeyId: string; AccessKeySecret: string }, p: Page = page): Promise<void> {
  await p.goto(url());
  await p.getByLabel('AccessKeyId').fill(cred.AccessKeyId);
  await p.getByLabel('AccessKeySecret').fill(cred.AccessKeySecret);
  await p.getByRole('button', { name: 'Sign in' }).click();
  await settled(p);
}

async function signOut(): Promise<void> {
  await page.getByRole('button', { name: 'Sign out' }).click();
  await page.getByRole('heading', { name: 'Sign in to kmsd' }).waitFor();
}

/** Clicks and takes the file the browser downloads: its suggested name and where it was saved. */
async function downloadBy(name: string | RegExp): Promise<{ file: string; path: string }> {
  const [dl] = await Promise.all([page.waitForEvent('download'), page.getByRole('button', { name }).click()]);
  const file = dl.suggestedFilename();
  const saved = path.join(dir, 'downloads', file);
  fs.mkdirSync(path.dirname(saved), { recursive: true });
  await dl.saveAs(saved);
  return { file, path: saved };
}

function openssl(args: string[], cwd = dir): string {
  return run('openssl', args, { cwd }).stdout.toString();
}

/** The seed's command: OAEP (SHA-1) under the DER public key. */
function wrapLikeTheSeed(material: string, publicKeyDer: string, out: string): void {
  openssl(['rsautl', '-encrypt', '-in', material, '-oaep', '-inkey', publicKeyDer, '-keyform', 'DER', '-pubin', '-out', out]);
}

async function importThroughPage(keyId: string, materialFile: string, tokenFile: string, expire?: string): Promise<void> {
  await page.goto(url(`#/import/${keyId}`));
  await page.getByLabel('Encrypted key material file').setInputFiles(materialFile);
  await page.getByLabel('Import token file').setInputFiles(tokenFile);
  if (expire) {
    await page.getByLabel('At a date and time').check();
    await page.getByLabel('Expires at (your local time)').fill(expire);
  }
  await page.getByRole('button', { name: 'Import', exact: true }).click();
  await settled();
}

function kmsctlOk(args: string[]) {
  const r = k.kmsctl(args);
  expect(r.code, `kmsctl ${args.join(' ')}: ${r.stderr}`).toBe(0);
  return r.json;
}

/** kmsd's answer over gRPC, in process (checks of state are cheaper than a kmsctl process each). */
// eslint-disable-next-line @typescript-eslint/no-explicit-any
async function grpc(action: string, req: Record<string, unknown>): Promise<any> {
  return k.client.call(action as never, req as never);
}

async function keyState(keyId: string): Promise<string> {
  return (await grpc('DescribeKey', { KeyId: keyId })).KeyMetadata.KeyState;
}

/** An EXTERNAL HSM key and its import parameters, as files (for the error cases). */
async function externalKeyWithParameters(): Promise<{ keyId: string; pub: string; token: string }> {
  const keyId = (await grpc('CreateKey', { Origin: 'EXTERNAL', ProtectionLevel: 'HSM' })).KeyMetadata.KeyId;
  const p = await grpc('GetParametersForImport', { KeyId: keyId, WrappingAlgorithm: 'RSAES_OAEP_SHA_1', WrappingKeySpec: 'RSA_2048' });
  const files = { keyId, pub: path.join(dir, `publickey_${keyId}.bin`), token: path.join(dir, `token_${keyId}.txt`) };
  fs.writeFileSync(files.pub, Buffer.from(p.PublicKey, 'base64'));
  fs.writeFileSync(files.token, p.ImportToken);
  return files;
}

let seedKeyId = '';
const material = () => path.join(dir, 'KeyMaterial.bin');

describe('the console is served with its security headers', () => {
  it('/console/ has a strict CSP, no framing, no referrer, and no inline script', async () => {
    const r = await rawRequest(k.httpPort, { method: 'GET', path: '/console/' });
    expect(r.status).toBe(200);
    expect(r.headers['content-type']).toMatch(/^text\/html/);
    const csp = String(r.headers['content-security-policy']);
    expect(csp).toContain("default-src 'none'");
    expect(csp).toContain("script-src 'self'");
    expect(csp).toContain("connect-src 'self'");
    expect(csp).toContain("frame-ancestors 'none'");
    expect(csp).not.toMatch(/unsafe-inline|unsafe-eval|https?:/);
    expect(r.headers['x-frame-options']).toBe('DENY');
    expect(r.headers['referrer-policy']).toBe('no-referrer');
    expect(r.headers['x-content-type-options']).toBe('nosniff');
    // Every script is a file of the build; nothing points outside kmsd.
    expect(r.body).not.toMatch(/<script(?![^>]*\bsrc=)[^>]*>/);
    expect(r.body).not.toMatch(/(src|href)="(https?:)?\/\//);
    const asset = /src="(\/console\/assets\/[^"]+\.js)"/.exec(r.body)?.[1];
    expect(asset).toBeTruthy();
    const js = await rawRequest(k.httpPort, { method: 'GET', path: asset! });
    expect(js.status).toBe(200);
    expect(js.headers['content-type']).toMatch(/^text\/javascript/);
    expect(js.headers['content-security-policy']).toBe(csp);
  });

  it('/console redirects, an unknown file is 404 and a POST is 405, each with the same headers; API answers are no-store', async () => {
    const redirect = await rawRequest(k.httpPort, { method: 'GET', path: '/console' });
    expect(redirect.status).toBe(301);
    expect(redirect.headers.location).toBe('/console/');
    const missing = await rawRequest(k.httpPort, { method: 'GET', path: '/console/../../etc/passwd' });
    expect(missing.status).toBe(404);
    expect(missing.headers['x-frame-options']).toBe('DENY');
    const post = await rawRequest(k.httpPort, { method: 'POST', path: '/console/', body: 'x' });
    expect(post.status).toBe(405);
    expect(post.headers['content-security-policy']).toBeTruthy();
    const api = await rawRequest(k.httpPort, { method: 'POST', path: '/', headers: { 'content-type': 'application/x-www-form-urlencoded' }, body: 'Action=ListKeys' });
    expect(api.headers['cache-control']).toBe('no-store');
  });
});

describe('sign-in', () => {
  it('a wrong secret is refused in the page, and nothing is stored', async () => {
    await signIn({ AccessKeyId: k.devKey.AccessKeyId, AccessKeySecret: `${k.devKey.AccessKeySecret}x` });
    const alert = page.getByRole('alert');
    await expect(alert.textContent()).resolves.toMatch(/AccessKeySecret is wrong.*SignatureDoesNotMatch/s);
    expect(await page.evaluate(() => (globalThis as unknown as Web).sessionStorage.length + (globalThis as unknown as Web).localStorage.length)).toBe(0);
    await shot('01-sign-in-wrong-secret');
  });

  it('the development key signs in; the key is in sessionStorage only, and Sign out clears it', async () => {
    await signIn(k.devKey);
    await page.getByRole('heading', { name: 'Keys' }).waitFor();
    await expect(page.locator('.empty').textContent()).resolves.toContain('No keys yet');
    expect(await page.evaluate(() => [(globalThis as unknown as Web).sessionStorage.length, (globalThis as unknown as Web).localStorage.length])).toEqual([1, 0]);
    await shot('02-keys-empty');
    await signOut();
    expect(await page.evaluate(() => (globalThis as unknown as Web).sessionStorage.length + (globalThis as unknown as Web).localStorage.length)).toBe(0);
    await signIn(k.devKey);
  });
});

describe("the seed's console flow", () => {
  it('creates an EXTERNAL HSM key with the form field by field', async () => {
    await page.goto(url('#/create'));
    await expect(page.getByLabel('KMS Instance').inputValue()).resolves.toBe('Default');
    expect(await page.getByLabel('KMS Instance').getAttribute('readonly')).not.toBeNull();
    const alias = page.getByLabel('Alias Name');
    await alias.fill('seed key!');
    await page.getByText(/Alias Name: only letters, digits, _, - and \/ are allowed/).waitFor();
    expect(await alias.getAttribute('aria-invalid')).toBe('true');
    expect(await page.getByRole('button', { name: 'OK' }).isDisabled()).toBe(true);
    await alias.fill('seed/console-key_1');
    await page.getByLabel('Hsm', { exact: true }).check();
    expect(await page.getByLabel('Rotation Period').isVisible()).toBe(true);
    await page.getByLabel('External', { exact: true }).check();
    // The seed's acknowledgement gates OK; the rotation period is for KMS-made material only.
    expect(await page.getByLabel('Rotation Period').isVisible()).toBe(false);
    expect(await page.getByRole('button', { name: 'OK' }).isDisabled()).toBe(true);
    await page.getByLabel('I understand the implications of using external key material').check();
    await shot('03-create-external-key');
    await page.getByRole('button', { name: 'OK' }).click();
    await settled();
    const status = await page.getByRole('status').last().textContent();
    expect(status).toMatch(/PendingImport.*get import parameters.*import key material/s);
    expect(status).toContain('alias/seed/console-key_1');
    seedKeyId = /([0-9a-f-]{36}) created/.exec(status ?? '')![1];
    await shot('04-key-created-pending-import');
    const d = (await grpc('DescribeKey', { KeyId: seedKeyId })).KeyMetadata;
    expect([d.Origin, d.ProtectionLevel, d.KeyState]).toEqual(['EXTERNAL', 'HSM', 'PendingImport']);
  });

  it('Sign/Verify is refused by kmsd with the reason', async () => {
    await page.goto(url('#/create'));
    await page.getByLabel('Sign/Verify').check();
    await page.getByRole('button', { name: 'OK' }).click();
    await settled();
    await expect(page.getByRole('alert').textContent()).resolves.toMatch(/InvalidParameter.*KeyUsage/s);
  });

  it('gets import parameters for RSAES_OAEP_SHA_1 / RSA_2048 and downloads files named as kmsctl names them', async () => {
    await page.goto(url(`#/import-params/${seedKeyId}`));
    await page.getByLabel('Wrapping algorithm').selectOption('RSAES_OAEP_SHA_1');
    await page.getByLabel('Wrapping key spec').selectOption('RSA_2048');
    await page.getByRole('button', { name: 'Get parameters' }).click();
    await settled();
    const status = await page.getByRole('status').last().textContent();
    expect(status).toMatch(/Import token valid until \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC/);
    const der = await downloadBy(`Download publickey_${seedKeyId}.bin`);
    const pem = await downloadBy(`Download publickey_${seedKeyId}.pem`);
    const token = await downloadBy(`Download token_${seedKeyId}.txt`);
    expect([der.file, pem.file, token.file]).toEqual([`publickey_${seedKeyId}.bin`, `publickey_${seedKeyId}.pem`, `token_${seedKeyId}.txt`]);
    expect(openssl(['pkey', '-pubin', '-inform', 'DER', '-in', der.path, '-noout', '-text'])).toMatch(/Public-Key: \(2048 bit\)/);
    // The PEM is the same key.
    expect(openssl(['pkey', '-pubin', '-in', pem.path, '-outform', 'DER']).length).toBeGreaterThan(0);
    expect(run('openssl', ['pkey', '-pubin', '-in', pem.path, '-outform', 'DER']).stdout.equals(fs.readFileSync(der.path))).toBe(true);
    expect(fs.readFileSync(token.path, 'utf8').length).toBeGreaterThan(20);
    // The seed's commands, ready to copy.
    const cmds = await page.locator('pre.commands').textContent();
    expect(cmds).toContain(`openssl rsautl -encrypt -in KeyMaterial.bin -oaep -inkey publickey_${seedKeyId}.bin -keyform DER -pubin -out EncryptedKeyMaterial.bin`);
    await shot('05-import-parameters');

    // The user's side, as the seed writes it: 32 random bytes, wrapped with the downloaded key.
    openssl(['rand', '-out', material(), '32']);
    wrapLikeTheSeed(material(), der.path, path.join(dir, 'EncryptedKeyMaterial.bin'));
  });

  it('uploads the material and the token through the page: Enabled, with the expiry', async () => {
    const expire = new Date(Date.now() + 30 * 86400_000);
    const local = new Date(expire.getTime() - expire.getTimezoneOffset() * 60_000).toISOString().slice(0, 16);
    await importThroughPage(seedKeyId, path.join(dir, 'EncryptedKeyMaterial.bin'), path.join(dir, 'downloads', `token_${seedKeyId}.txt`), local);
    const text = await page.locator('#import-state').textContent();
    expect(text).toMatch(/Key state: Enabled\. Material expires: \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC/);
    expect(await page.locator('.hint', { hasText: 'read as raw binary (256 bytes)' }).count()).toBe(1);
    await shot('06-import-enabled');
    const d = (await grpc('DescribeKey', { KeyId: seedKeyId })).KeyMetadata;
    expect(d.KeyState).toBe('Enabled');
    // Whole minutes in the browser's time zone: within a minute of what was chosen.
    expect(Math.abs(Date.parse(d.MaterialExpireTime) - expire.getTime())).toBeLessThan(61_000);
  });

  it('kmsctl encrypts under it, and the bytes the user chose decrypt that offline', async () => {
    const plaintext = crypto.randomBytes(40);
    const ctx = { app: 'console' };
    const enc = kmsctlOk(['Encrypt', '--KeyId', seedKeyId, '--Plaintext', plaintext.toString('base64'), '--EncryptionContext', JSON.stringify(ctx)]);
    expect(offlineDecrypt(fs.readFileSync(material()), enc.CiphertextBlob, ctx).equals(plaintext)).toBe(true);
  });

  it('the key page shows metadata, versions, aliases, the material expiry and the import path', async () => {
    await page.goto(url(`#/key/${seedKeyId}`));
    await settled();
    const meta = await page.locator('dl.meta').textContent();
    expect(meta).toMatch(/StateEnabled/);
    expect(meta).toMatch(/OriginEXTERNAL/);
    expect(meta).toMatch(/Protection levelHSM/);
    expect(meta).toMatch(/Material expiry\d{4}-/);
    expect(meta).toMatch(/Import path(in-token|composed|host-assisted|composed-host-assisted)/);
    await expect(page.getByText('alias/seed/console-key_1').count()).resolves.toBe(1);
    await shot('07-key-details');
  });

  it('deletes the material after a confirmation that names what stops working: PendingImport', async () => {
    await page.getByRole('button', { name: 'Delete key material' }).click();
    const dialog = page.getByRole('alertdialog');
    await expect(dialog.textContent()).resolves.toMatch(/Encrypt, Decrypt, GenerateDataKey and ReEncrypt with this key stop working/);
    await shot('08-delete-material-confirm');
    await dialog.getByRole('button', { name: 'Delete key material' }).click();
    await page.getByText('Key material deleted.').waitFor();
    await expect(page.locator('dl.meta').textContent()).resolves.toMatch(/StatePendingImport/);
    expect(await keyState(seedKeyId)).toBe('PendingImport');
  });

  it('imports the same material again through the page (as base64 text, detected)', async () => {
    await page.goto(url(`#/import-params/${seedKeyId}`));
    await page.getByRole('button', { name: 'Get parameters' }).click();
    await settled();
    const der = await downloadBy(`Download publickey_${seedKeyId}.bin`);
    const token = await downloadBy(`Download token_${seedKeyId}.txt`);
    const wrapped = path.join(dir, 'again.bin');
    wrapLikeTheSeed(material(), der.path, wrapped);
    const b64 = path.join(dir, 'EncryptedKeyMaterial_base64.txt');
    openssl(['enc', '-e', '-base64', '-A', '-in', wrapped, '-out', b64]);
    await importThroughPage(seedKeyId, b64, token.path);
    await expect(page.locator('#import-state').textContent()).resolves.toMatch(/Key state: Enabled\. Material expires: never/);
    expect(await page.locator('.hint', { hasText: 'read as base64 text (256 bytes)' }).count()).toBe(1);
  });
});

describe('errors in the page', () => {
  it('16-byte key material: the wrong size, in words', async () => {
    const x = await externalKeyWithParameters();
    const short = path.join(dir, 'short.bin');
    openssl(['rand', '-out', short, '16']);
    wrapLikeTheSeed(short, x.pub, path.join(dir, 'short.enc'));
    await importThroughPage(x.keyId, path.join(dir, 'short.enc'), x.token);
    const alert = await page.getByRole('alert').textContent();
    expect(alert).toMatch(/The key material is not right/);
    expect(alert).toMatch(/InvalidKeyMaterial.*256-bit AES key/s);
    await shot('09-error-short-material');
    expect(await keyState(x.keyId)).toBe('PendingImport');
  });

  it('a token of another key', async () => {
    const a = await externalKeyWithParameters();
    const b = await externalKeyWithParameters();
    const enc = path.join(dir, 'b.enc');
    wrapLikeTheSeed(material(), b.pub, enc);
    await importThroughPage(b.keyId, enc, a.token);
    const alert = await page.getByRole('alert').textContent();
    expect(alert).toMatch(/not valid for this key/);
    expect(alert).toMatch(/InvalidImportToken/);
    await shot('10-error-token-of-another-key');
    expect(await keyState(b.keyId)).toBe('PendingImport');
  });

  it('an action the policy denies shows the denial, not a broken page', async () => {
    const before = (await grpc('ListKeys', { PageSize: 1 })).TotalCount;
    // Another tab is another session (sessionStorage is per tab): the admin's stays signed in.
    const tab = await browser.context.newPage();
    tab.setDefaultTimeout(15_000);
    try {
      await signIn(viewer, tab);
      await tab.goto(url('#/create'));
      await tab.getByRole('button', { name: 'OK' }).click();
      await settled(tab);
      const alert = await tab.getByRole('alert').textContent();
      expect(alert).toMatch(/Denied by the policy.*Forbidden\.NoPermission/s);
      await expect(tab.getByRole('navigation').textContent()).resolves.toContain(viewer.AccessKeyId);
      await shot('11-error-denied', tab);
    } finally {
      await tab.close();
    }
    expect((await grpc('ListKeys', { PageSize: 1 })).TotalCount).toBe(before);
  });
});

describe('keys list', () => {
  it('filters by state and origin, and pages', async () => {
    for (const d of ['made by kmsd', 'made by kmsd too']) await grpc('CreateKey', { Description: d });
    await page.goto(url('#/keys'));
    await settled();
    const total = (await grpc('ListKeys', { PageSize: 1 })).TotalCount;
    expect(total).toBeGreaterThan(5);
    await page.getByLabel('Per page').selectOption('5');
    await settled();
    expect(await page.locator('tbody tr').count()).toBe(5);
    await page.getByText(`Page 1 of ${Math.ceil(total / 5)} (${total} keys)`).waitFor();
    await page.getByRole('button', { name: 'Next' }).click();
    await settled();
    await page.getByText(`Page 2 of ${Math.ceil(total / 5)} (${total} keys)`).waitFor();
    expect(await page.locator('tbody tr').count()).toBe(Math.min(5, total - 5));
    await page.getByLabel('Per page').selectOption('10');
    await settled();
    await page.getByLabel('State').selectOption('PendingImport');
    await settled();
    const pending = await page.locator('tbody tr td:nth-child(3)').allTextContents();
    expect(pending.length).toBeGreaterThan(0);
    expect(new Set(pending)).toEqual(new Set(['PendingImport']));
    await page.getByLabel('State').selectOption('');
    await page.getByLabel('Origin').selectOption('Aliyun_KMS');
    await settled();
    expect(new Set(await page.locator('tbody tr td:nth-child(4)').allTextContents())).toEqual(new Set(['Aliyun_KMS']));
    await page.getByLabel('Origin').selectOption('');
    await settled();
    await shot('12-keys');
  });
});

describe('a 2-of-3 ceremony', () => {
  let keys: Record<string, CustodianKeyFiles>;

  it('a guarded action from the key page says it needs 2 of 3 approvals and creates the proposal', async () => {
    keys = custodianKeys(dir, ['alice', 'bob', 'carol']);
    kmsctlOk(['InitCeremony', '--Custodians', Object.values(keys).map((c) => `${c.id}=${c.pub}`).join(','), '--Threshold', '2']);
    await page.goto(url(`#/key/${seedKeyId}`));
    await settled();
    await page.getByRole('button', { name: 'Disable', exact: true }).click();
    await settled();
    await page.getByText('DisableKey needs 2 of 3 approvals.').waitFor();
    await shot('13-needs-approvals');
    await page.getByRole('button', { name: 'Create a DisableKey proposal' }).click();
    await page.getByText(/Proposal [0-9a-f-]+ created \(0 of 2 approvals\)/).waitFor();
  });

  it('one signature uploaded from the page, one approved with kmsctl, executed from the page', async () => {
    await page.goto(url('#/ceremonies'));
    await settled();
    await expect(page.getByText('Threshold: 2 of 3 custodians').count()).resolves.toBe(1);
    const doc = await downloadBy(/^Download proposal_.*\.json$/);
    const pid = /^proposal_(.+)\.json$/.exec(doc.file)![1];
    const sig = path.join(dir, `signature_${pid}.bin`);
    fs.writeFileSync(sig, Buffer.from(opensslSign(keys.alice.pem, doc.path), 'base64'));
    await page.getByLabel('Custodian').selectOption('alice');
    await page.getByLabel('Signature file (raw or base64)').setInputFiles(sig);
    await page.getByRole('button', { name: 'Upload signature' }).click();
    await settled();
    const card = await page.locator('section.proposal').textContent();
    expect(card).toMatch(/Approvals1 of 2.*Approved byalice/s);
    expect(await page.getByRole('button', { name: 'Execute' }).isDisabled()).toBe(true);
    await shot('14-ceremony-one-approval');

    const bobSig = path.join(dir, 'bob.sig');
    fs.writeFileSync(bobSig, opensslSign(keys.bob.pem, doc.path));
    kmsctlOk(['ApproveProposal', '--ProposalId', pid, '--CustodianId', 'bob', '--SignatureFile', bobSig]);
    await page.reload();
    await settled();
    await page.getByRole('button', { name: 'Execute' }).click();
    await settled();
    await page.getByText('Executed: Succeeded.').waitFor();
    await shot('15-ceremony-executed');
    expect(await keyState(seedKeyId)).toBe('Disabled');
  });
});

describe('audit', () => {
  it('lists recent events with principal, action and outcome, and verifies the chain', async () => {
    await page.goto(url('#/audit'));
    await settled();
    const rows = await page.locator('tbody tr').allTextContents();
    expect(rows.some((r) => /local-adminExecuteProposal.*ok$/.test(r))).toBe(true);
    await page.getByRole('button', { name: 'Verify chain' }).click();
    await settled();
    await expect(page.getByRole('status').last().textContent()).resolves.toMatch(/Chain valid: \d+ records/);
    // The visible part: the trail is long by now.
    await shot('16-audit-verified', page, false);
    const seqs = async () => (await page.locator('tbody tr td:first-child').allTextContents()).map(Number);
    const newest = await seqs();
    expect(newest.length).toBeGreaterThanOrEqual(25);
    expect(newest).toEqual([...newest].sort((a, b) => b - a));
    await page.getByRole('button', { name: 'Older' }).click();
    await settled();
    const older = await seqs();
    expect(Math.max(...older)).toBeLessThan(Math.min(...newest));
    await page.getByRole('button', { name: 'Newer' }).click();
    await settled();
    expect(Math.max(...(await seqs()))).toBeGreaterThanOrEqual(Math.max(...newest));
  });
});

describe('narrow screens and the browser', () => {
  it('is readable at 390 px wide', async () => {
    await page.setViewportSize({ width: 390, height: 844 });
    await page.goto(url('#/create'));
    await settled();
    // Nothing wider than the screen but the tables' own scrolling boxes.
    expect(await page.evaluate(() => (globalThis as unknown as Web).document.documentElement.scrollWidth)).toBeLessThanOrEqual(390);
    await shot('17-create-390px');
    await page.goto(url('#/keys'));
    await settled();
    expect(await page.evaluate(() => (globalThis as unknown as Web).document.documentElement.scrollWidth)).toBeLessThanOrEqual(390);
    await shot('18-keys-390px');
    await page.setViewportSize({ width: 1280, height: 900 });
  });

  it('the browser reported nothing against the Content-Security-Policy', () => {
    expect(cspViolations).toEqual([]);
  });
});
