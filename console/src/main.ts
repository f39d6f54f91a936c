// The kmsd web console: the seed's console steps (create a key, get import parameters, upload key
// material, delete it), key details, ceremonies and the audit trail. Every action is one signed call
// of the Alibaba dialect (api.ts); kmsd decides, the page shows what it answered. Routes are URL
// fragments (#/keys, #/key/ID, ...), so the browser's back button and bookmarks work.

import './style.css';
import { ApiError, Answer, Credentials, call, clearCredentials, loadCredentials, saveCredentials } from './api';
import { b64ToBytes, clear, download, field, fileAsBase64, h, pemOf, radios } from './dom';

let cred: Credentials | null = loadCredentials();
const root = document.getElementById('app') as HTMLElement;
const view = h('main', { id: 'view', tabindex: '-1' });
const progress = h('p', { id: 'progress', role: 'status', 'aria-live': 'polite' });
const nav = h('nav', { 'aria-label': 'Console' });

/** Calls running now: the progress line shows while any runs. */
let running = 0;

/** Runs one or more calls with the progress line shown and the clicked control disabled meanwhile. */
async function busy<T>(what: string, fn: () => Promise<T>, control?: HTMLButtonElement): Promise<T> {
  running++;
  progress.textContent = `${what}…`;
  view.setAttribute('aria-busy', 'true');
  // Spans nest (a submission that reads files, then calls twice): the outermost one re-enables.
  const wasDisabled = control?.disabled ?? false;
  if (control) control.disabled = true;
  try {
    return await fn();
  } finally {
    if (--running === 0) {
      progress.textContent = '';
      view.removeAttribute('aria-busy');
    }
    if (control) control.disabled = wasDisabled;
  }
}

function api(action: string, params: Record<string, string | number | boolean | undefined> = {}): Promise<Answer> {
  if (!cred) throw new ApiError('NotSignedIn', 'sign in first', 0);
  return call(cred, action, params);
}

/** Words for the answers a user is most likely to meet; kmsd's own message always follows. */
const EXPLAIN: Record<string, string> = {
  'Forbidden.NoPermission': 'Denied by the policy: the access key you signed in with is not allowed this action.',
  SignatureDoesNotMatch: 'The AccessKeySecret is wrong for this AccessKeyId.',
  'InvalidAccessKeyId.NotFound': 'kmsd has no access key with this AccessKeyId.',
  'InvalidAccessKeyId.Inactive': 'This access key is Inactive.',
  IllegalTimestamp: "This computer's clock is more than 15 minutes from kmsd's.",
  InvalidKeyMaterial: 'The key material is not right (its size, or how it was encrypted).',
  InvalidImportToken: 'The import token is not valid for this key (it may be the token of another key).',
  ExpiredImportToken: 'The import token has expired: get new import parameters.',
  'Rejected.KeyMaterialMismatch': 'This is not the material the key had before: a key takes back only the same material.',
  'Rejected.QuorumRequired': 'This action needs the approval of key custodians.',
  'Rejected.QuorumNotMet': 'Not enough custodians have approved yet.',
  'Rejected.SignatureInvalid': "The signature does not verify with this custodian's public key over this document.",
  'Rejected.PendingImport': 'The key has no key material yet: import it first.',
  'Rejected.Disabled': 'The key is Disabled.',
  NetworkError: 'kmsd could not be reached.',
};

/** An error box for a failed call; for a guarded action, the offer to propose it instead. */
function errorBox(e: unknown, guarded?: { action: string; params: Record<string, string> }): HTMLElement {
  const box = h('div', { class: 'error', role: 'alert' });
  if (e instanceof ApiError) {
    box.append(h('p', { class: 'error-title' }, EXPLAIN[e.code] ?? 'kmsd refused the request.'), h('p', {}, h('code', {}, e.code), ': ', e.message));
    if (e.code === 'Rejected.QuorumRequired' && guarded) box.append(proposeOffer(guarded.action, guarded.params));
  } else {
    box.append(h('p', { class: 'error-title' }, 'Something went wrong in the page.'), h('p', {}, String((e as Error)?.message ?? e)));
  }
  return box;
}

/** "needs M of N approvals" and a button that creates the proposal. */
function proposeOffer(action: string, params: Record<string, string>): HTMLElement {
  const out = h('div', { class: 'quorum' });
  const btn = h('button', { type: 'button' }, `Create a ${action} proposal`);
  const result = h('div', {});
  out.append(h('p', { class: 'needs' }, 'Checking the quorum…'), btn, result);
  api('DescribeCeremony')
    .then((c) => ((out.querySelector('.needs') as HTMLElement).textContent = `${action} needs ${c.Threshold} of ${c.Custodians?.length ?? 0} approvals.`))
    .catch(() => ((out.querySelector('.needs') as HTMLElement).textContent = `${action} needs custodian approvals.`));
  btn.addEventListener('click', async () => {
    try {
      const p = await busy('Creating the proposal', () => api('CreateProposal', { Action: action, Parameters: JSON.stringify(params) }), btn);
      clear(result, h('p', { class: 'ok' }, `Proposal ${p.ProposalId} created (${p.Approvals} of ${p.Required} approvals). `, h('a', { href: '#/ceremonies' }, 'Open Ceremonies'), ' to download its document for signing.'));
      btn.disabled = true;
    } catch (e) {
      clear(result, errorBox(e));
    }
  });
  return out;
}

function fmtTime(t: string | undefined): string {
  return t ? t.replace('T', ' ').replace(/\.\d+Z$|Z$/, ' UTC') : '';
}

function expiryOf(m: Answer): string {
  if (m.Origin !== 'EXTERNAL') return '—';
  if (m.KeyState === 'PendingImport') return 'no material';
  return m.MaterialExpireTime ? fmtTime(m.MaterialExpireTime) : 'never';
}

function title(text: string, ...extra: (Node | string)[]): HTMLElement {
  document.title = `${text} · kmsd console`;
  return h('h1', {}, text, ...extra);
}

// ------------------------------------------------------------------ sign in

function signInPage(message?: HTMLElement): void {
  const id = h('input', { type: 'text', name: 'AccessKeyId', autocomplete: 'username', required: true, spellcheck: 'false' });
  const secret = h('input', { type: 'password', name: 'AccessKeySecret', autocomplete: 'current-password', required: true });
  const btn = h('button', { type: 'submit' }, 'Sign in');
  const out = h('div', {}, message ?? null);
  const form = h(
    'form',
    { class: 'card narrow', 'aria-labelledby': 'signin-title' },
    h('h1', { id: 'signin-title' }, 'Sign in to kmsd'),
    h('p', { class: 'hint' }, 'With an access key (kmsctl CreateAccessKey; in development, var/dev-access-key.json). It is kept in this tab only (sessionStorage) and every call is signed with it in the browser.'),
    field('AccessKeyId', id).row,
    field('AccessKeySecret', secret).row,
    btn,
    out,
  );
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const c = { AccessKeyId: id.value.trim(), AccessKeySecret: secret.value };
    try {
      await busy('Signing in', () => call(c, 'ListKeys', { PageSize: 1 }), btn);
    } catch (e) {
      // A call the policy denies still proves the key and secret; anything else is a failed sign-in.
      if (!(e instanceof ApiError && e.code === 'Forbidden.NoPermission')) {
        clear(out, errorBox(e));
        return;
      }
    }
    cred = c;
    saveCredentials(c);
    secret.value = '';
    location.hash = '#/keys';
    route();
  });
  document.title = 'Sign in · kmsd console';
  clear(nav);
  clear(view, form);
  id.focus();
}

function signOut(): void {
  clearCredentials();
  cred = null;
  location.hash = '';
  signInPage(h('p', { class: 'ok', role: 'status' }, 'Signed out.'));
}

function renderNav(current: string): void {
  const link = (href: string, text: string) => h('a', { href, 'aria-current': current === href ? 'page' : undefined }, text);
  clear(
    nav,
    h('span', { class: 'brand' }, 'kmsd'),
    link('#/keys', 'Keys'),
    link('#/create', 'Create key'),
    link('#/ceremonies', 'Ceremonies'),
    link('#/audit', 'Audit'),
    h('span', { class: 'who' }, cred?.AccessKeyId ?? ''),
    h('button', { type: 'button', class: 'link', onclick: signOut }, 'Sign out'),
  );
}

// ------------------------------------------------------------------ keys

const keysState = { page: 1, size: 10, state: '', origin: '' };
/** Bumped by every load of the list: an answer to an older load (filters changed meanwhile) is dropped. */
let keysLoad = 0;

async function keysPage(): Promise<void> {
  const stateSel = h('select', {}, ...['', 'Enabled', 'Disabled', 'PendingImport', 'PendingDeletion'].map((s) => h('option', { value: s, selected: s === keysState.state }, s || 'Any')));
  const originSel = h('select', {}, ...[['', 'Any'], ['Aliyun_KMS', 'KMS'], ['EXTERNAL', 'External']].map(([v, t]) => h('option', { value: v, selected: v === keysState.origin }, t)));
  const sizeSel = h('select', {}, ...[5, 10, 20, 50].map((n) => h('option', { value: String(n), selected: n === keysState.size }, String(n))));
  const list = h('div', {});
  const onFilter = () => {
    keysState.state = stateSel.value;
    keysState.origin = originSel.value;
    keysState.size = Number(sizeSel.value);
    keysState.page = 1;
    void load();
  };
  for (const s of [stateSel, originSel, sizeSel]) s.addEventListener('change', onFilter);
  clear(
    view,
    title('Keys', ' ', h('a', { href: '#/create', class: 'button' }, 'Create key')),
    h('div', { class: 'filters' }, field('State', stateSel).row, field('Origin', originSel).row, field('Per page', sizeSel).row),
    list,
  );

  async function load(): Promise<void> {
    const mine = ++keysLoad;
    try {
      const { rows, total } = await busy('Loading keys', async () => {
        const aliases = new Map<string, string[]>();
        try {
          const a = await api('ListAliases', { PageSize: 100 });
          for (const x of a.Aliases?.Alias ?? []) aliases.set(x.KeyId, [...(aliases.get(x.KeyId) ?? []), x.AliasName]);
        } catch {
          // Without ListAliases the column stays empty; the keys still show.
        }
        const describe = async (ids: string[]) => Promise.all(ids.map(async (id) => ({ ...(await api('DescribeKey', { KeyId: id })).KeyMetadata, Aliases: aliases.get(id) ?? [] })));
        if (!keysState.state && !keysState.origin) {
          const r = await api('ListKeys', { PageNumber: keysState.page, PageSize: keysState.size });
          return { rows: await describe((r.Keys?.Key ?? []).map((k: Answer) => k.KeyId)), total: Number(r.TotalCount ?? 0) };
        }
        // A filter looks at every key (ListKeys has none): kmsd's metadata, filtered here for display.
        const all: string[] = [];
        for (let p = 1; ; p++) {
          const r = await api('ListKeys', { PageNumber: p, PageSize: 100 });
          const ids = (r.Keys?.Key ?? []).map((k: Answer) => k.KeyId);
          all.push(...ids);
          if (ids.length < 100 || all.length >= Number(r.TotalCount ?? 0)) break;
        }
        const metas = (await describe(all)).filter((m) => (!keysState.state || m.KeyState === keysState.state) && (!keysState.origin || m.Origin === keysState.origin));
        return { rows: metas.slice((keysState.page - 1) * keysState.size, keysState.page * keysState.size), total: metas.length };
      });
      if (mine !== keysLoad) return;
      const pages = Math.max(1, Math.ceil(total / keysState.size));
      if (rows.length === 0) {
        clear(list, h('p', { class: 'empty' }, total === 0 && !keysState.state && !keysState.origin ? 'No keys yet. ' : 'No key matches these filters. ', h('a', { href: '#/create' }, 'Create key')));
        return;
      }
      const table = h(
        'table',
        { class: 'cards' },
        h('caption', { class: 'sr-only' }, 'Customer master keys'),
        h('thead', {}, h('tr', {}, ...['Key ID', 'Alias', 'State', 'Origin', 'Protection level', 'Material expiry'].map((t) => h('th', { scope: 'col' }, t)))),
        h(
          'tbody',
          {},
          ...rows.map((m) =>
            h('tr', {}, h('td', { 'data-label': 'Key ID' }, h('a', { href: `#/key/${m.KeyId}`, class: 'mono' }, m.KeyId)), h('td', { 'data-label': 'Alias' }, (m.Aliases as string[]).join(', ') || '—'), h('td', { 'data-label': 'State' }, h('span', { class: `state ${m.KeyState}` }, m.KeyState)), h('td', { 'data-label': 'Origin' }, m.Origin), h('td', { 'data-label': 'Protection level' }, m.ProtectionLevel), h('td', { 'data-label': 'Material expiry' }, expiryOf(m))),
          ),
        ),
      );
      const prev = h('button', { type: 'button', disabled: keysState.page <= 1, onclick: () => ((keysState.page -= 1), void load()) }, 'Previous');
      const next = h('button', { type: 'button', disabled: keysState.page >= pages, onclick: () => ((keysState.page += 1), void load()) }, 'Next');
      clear(list, h('div', { class: 'scroll' }, table), h('div', { class: 'pager' }, prev, h('span', {}, `Page ${keysState.page} of ${pages} (${total} keys)`), next));
    } catch (e) {
      if (mine === keysLoad) clear(list, errorBox(e));
    }
  }
  await load();
}

// ------------------------------------------------------------------ create key

const ROTATION = [
  ['', 'Disabled'],
  ['604800s', '7 days'],
  ['2592000s', '30 days'],
  ['7776000s', '90 days'],
  ['15552000s', '180 days'],
  ['31536000s', '365 days'],
];

function createPage(): void {
  const instance = h('input', { type: 'text', value: 'Default', readonly: true });
  const spec = h('select', {}, h('option', { value: 'Aliyun_AES_256' }, 'Aliyun_AES_256'));
  const purpose = radios('KeyUsage', 'Purpose', [
    { value: 'ENCRYPT/DECRYPT', label: 'Encrypt/Decrypt' },
    { value: 'SIGN/VERIFY', label: 'Sign/Verify', note: '(kmsd has no asymmetric keys yet: it refuses this)' },
  ], 'ENCRYPT/DECRYPT');
  const alias = h('input', { type: 'text', name: 'AliasName', spellcheck: 'false', autocomplete: 'off' });
  const aliasField = field('Alias Name', alias, 'Optional. Letters, digits, _, - and /; becomes alias/NAME.');
  const level = radios('ProtectionLevel', 'Protection Level', [
    { value: 'SOFTWARE', label: 'Software' },
    { value: 'HSM', label: 'Hsm' },
  ], 'SOFTWARE');
  const desc = h('textarea', { rows: 2, name: 'Description' });
  const rotation = h('select', {}, ...ROTATION.map(([v, t]) => h('option', { value: v }, t)));
  const rotationField = field('Rotation Period', rotation, 'Automatic rotation, for keys whose material kmsd makes.');
  const ack = h('input', { type: 'checkbox', id: 'ack-external' });
  const ackRow = h('div', { class: 'checkbox hidden' }, ack, h('label', { for: 'ack-external' }, 'I understand the implications of using external key material'));
  const ok = h('button', { type: 'submit' }, 'OK');
  const out = h('div', {});
  const refresh = () => {
    const external = source.value() === 'EXTERNAL';
    rotationField.row.classList.toggle('hidden', external);
    ackRow.classList.toggle('hidden', !external);
    const aliasOk = /^[A-Za-z0-9_/-]*$/.test(alias.value);
    aliasField.error.textContent = aliasOk ? '' : 'Alias Name: only letters, digits, _, - and / are allowed.';
    alias.setAttribute('aria-invalid', String(!aliasOk));
    ok.disabled = !aliasOk || (external && !ack.checked);
  };
  const source = radios('Origin', 'Key Material Source', [
    { value: 'Aliyun_KMS', label: 'KMS' },
    { value: 'EXTERNAL', label: 'External' },
  ], 'Aliyun_KMS', refresh);
  alias.addEventListener('input', refresh);
  ack.addEventListener('change', refresh);
  const form = h(
    'form',
    { class: 'card', 'aria-labelledby': 'create-title' },
    h('h1', { id: 'create-title' }, 'Create key'),
    field('KMS Instance', instance, 'kmsd has one instance.').row,
    field('Key Spec', spec).row,
    purpose.set,
    aliasField.row,
    level.set,
    field('Description', desc).row,
    rotationField.row,
    source.set,
    ackRow,
    ok,
    out,
  );
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const external = source.value() === 'EXTERNAL';
    try {
      const created = await busy(
        'Creating the key',
        () =>
          api('CreateKey', {
            KeySpec: spec.value,
            KeyUsage: purpose.value(),
            ProtectionLevel: level.value(),
            Description: desc.value,
            Origin: source.value(),
            EnableAutomaticRotation: !external && rotation.value ? true : undefined,
            RotationInterval: !external && rotation.value ? rotation.value : undefined,
          }),
        ok,
      );
      const m = created.KeyMetadata;
      const notes: (Node | string)[] = [];
      if (alias.value) {
        const name = alias.value.startsWith('alias/') ? alias.value : `alias/${alias.value}`;
        try {
          await busy('Creating the alias', () => api('CreateAlias', { AliasName: name, KeyId: m.KeyId }));
          notes.push(h('p', {}, `Alias ${name} points at it.`));
        } catch (e) {
          notes.push(h('p', {}, 'The key was created, but not its alias:'), errorBox(e));
        }
      }
      const next =
        m.KeyState === 'PendingImport'
          ? h('p', {}, 'Its state is PendingImport: it has no key material yet. Next: ', h('a', { href: `#/import-params/${m.KeyId}` }, 'get import parameters'), ', encrypt your key material with the public key, then ', h('a', { href: `#/import/${m.KeyId}` }, 'import key material'), '.')
          : h('p', {}, `Its state is ${m.KeyState}.`);
      clear(out, h('div', { class: 'ok', role: 'status' }, h('p', {}, 'Key ', h('a', { href: `#/key/${m.KeyId}`, class: 'mono' }, m.KeyId), ' created.'), next, ...notes));
    } catch (e) {
      clear(out, errorBox(e));
    }
  });
  document.title = 'Create key · kmsd console';
  clear(view, form);
  refresh();
}

// ------------------------------------------------------------------ key details

async function keyPage(keyId: string): Promise<void> {
  clear(view, title('Key', ' ', h('span', { class: 'mono small' }, keyId)));
  let m: Answer;
  let versions: Answer[] = [];
  let aliases: Answer[] = [];
  try {
    m = (await busy('Loading the key', () => api('DescribeKey', { KeyId: keyId }))).KeyMetadata;
    const [v, a] = await busy('Loading versions and aliases', () => Promise.allSettled([api('ListKeyVersions', { KeyId: keyId, PageSize: 100 }), api('ListAliasesByKeyId', { KeyId: keyId, PageSize: 100 })]));
    if (v.status === 'fulfilled') versions = v.value.KeyVersions?.KeyVersion ?? [];
    if (a.status === 'fulfilled') aliases = a.value.Aliases?.Alias ?? [];
  } catch (e) {
    view.append(errorBox(e));
    return;
  }
  const rows: [string, string][] = [
    ['State', m.KeyState],
    ['Origin', m.Origin],
    ['Protection level', m.ProtectionLevel],
    ['Key spec', m.KeySpec],
    ['Purpose', m.KeyUsage],
    ['Description', m.Description || '—'],
    ['Created', fmtTime(m.CreationDate)],
    ['Material expiry', expiryOf(m)],
    ['Import path', m.Origin === 'EXTERNAL' ? m.MaterialImportPath || '—' : '— (kmsd made the material)'],
    ['Automatic rotation', m.AutomaticRotation === 'Enabled' ? `every ${m.RotationInterval}` : 'Disabled'],
    ['Primary version', m.PrimaryKeyVersion || '—'],
    ['Deletion date', m.DeleteDate ? fmtTime(m.DeleteDate) : '—'],
    ['ARN', m.Arn],
  ];
  const out = h('div', { id: 'key-result' });
  const act = (label: string, action: string, params: Record<string, string | number>, guardedParams?: Record<string, string>) => {
    const b = h('button', { type: 'button' }, label);
    b.addEventListener('click', async () => {
      try {
        await busy(label, () => api(action, params), b);
        await keyPage(keyId);
        (document.getElementById('key-result') as HTMLElement).append(h('p', { class: 'ok', role: 'status' }, `${label}: done.`));
      } catch (e) {
        clear(out, errorBox(e, { action, params: guardedParams ?? Object.fromEntries(Object.entries(params).map(([k, v]) => [k, String(v)])) }));
      }
    });
    return b;
  };
  const days = h('input', { type: 'number', min: '7', max: '30', value: '30', class: 'short' });
  const scheduleBtn = h('button', { type: 'button' }, 'Schedule deletion');
  scheduleBtn.addEventListener('click', async () => {
    const params = { KeyId: keyId, PendingWindowInDays: days.value };
    try {
      await busy('Scheduling deletion', () => api('ScheduleKeyDeletion', params), scheduleBtn);
      await keyPage(keyId);
    } catch (e) {
      clear(out, errorBox(e, { action: 'ScheduleKeyDeletion', params }));
    }
  });
  const actions = h('div', { class: 'actions' });
  if (m.KeyState === 'Disabled') actions.append(act('Enable', 'EnableKey', { KeyId: keyId }));
  if (m.KeyState === 'Enabled') actions.append(act('Disable', 'DisableKey', { KeyId: keyId }));
  if (m.KeyState === 'PendingDeletion') actions.append(act('Cancel deletion', 'CancelKeyDeletion', { KeyId: keyId }));
  else actions.append(h('span', { class: 'inline' }, field('Pending window (days)', days).row, scheduleBtn));
  const importBox = h('div', {});
  if (m.Origin === 'EXTERNAL') {
    importBox.append(
      h('h2', {}, 'Key material'),
      h('p', { class: 'actions' }, h('a', { href: `#/import-params/${keyId}`, class: 'button' }, 'Get import parameters'), h('a', { href: `#/import/${keyId}`, class: 'button' }, 'Import key material'), m.KeyState !== 'PendingImport' ? deleteMaterialButton(keyId, out) : null),
    );
  }
  const aliasInput = h('input', { type: 'text', spellcheck: 'false', autocomplete: 'off' });
  const addAlias = h('button', { type: 'button' }, 'Add alias');
  addAlias.addEventListener('click', async () => {
    const name = aliasInput.value.startsWith('alias/') ? aliasInput.value : `alias/${aliasInput.value}`;
    try {
      await busy('Adding the alias', () => api('CreateAlias', { AliasName: name, KeyId: keyId }), addAlias);
      await keyPage(keyId);
    } catch (e) {
      clear(out, errorBox(e));
    }
  });
  view.append(
    h('dl', { class: 'meta' }, ...rows.flatMap(([k, v]) => [h('dt', {}, k), h('dd', {}, v)])),
    h('h2', {}, 'Actions'),
    actions,
    importBox,
    out,
    h('h2', {}, 'Versions'),
    versions.length ? h('ul', {}, ...versions.map((v) => h('li', {}, h('span', { class: 'mono' }, v.KeyVersionId), ` created ${fmtTime(v.CreationDate)}`))) : h('p', { class: 'empty' }, 'No versions.'),
    h('h2', {}, 'Aliases'),
    aliases.length ? h('ul', {}, ...aliases.map((a) => h('li', {}, a.AliasName, ' ', act('Delete', 'DeleteAlias', { AliasName: a.AliasName })))) : h('p', { class: 'empty' }, 'No aliases.'),
    h('div', { class: 'inline' }, field('New alias', aliasInput).row, addAlias),
  );
}

function deleteMaterialButton(keyId: string, out: HTMLElement): HTMLElement {
  const b = h('button', { type: 'button', class: 'danger' }, 'Delete key material');
  b.addEventListener('click', () => {
    const yes = h('button', { type: 'button', class: 'danger' }, 'Delete key material');
    const no = h('button', { type: 'button' }, 'Keep it');
    const dialog = h(
      'div',
      { class: 'confirm', role: 'alertdialog', 'aria-labelledby': 'confirm-title', 'aria-describedby': 'confirm-text' },
      h('p', { id: 'confirm-title', class: 'error-title' }, `Delete the key material of ${keyId}?`),
      h('p', { id: 'confirm-text' }, 'Encrypt, Decrypt, GenerateDataKey and ReEncrypt with this key stop working, and data encrypted under it cannot be decrypted, until the same key material is imported again. kmsd keeps no copy: make sure you have one.'),
      yes,
      no,
    );
    no.addEventListener('click', () => clear(out));
    yes.addEventListener('click', async () => {
      try {
        await busy('Deleting the key material', () => api('DeleteKeyMaterial', { KeyId: keyId }), yes);
        await keyPage(keyId);
        (document.getElementById('key-result') as HTMLElement).append(h('p', { class: 'ok', role: 'status' }, 'Key material deleted.'));
      } catch (e) {
        clear(out, errorBox(e, { action: 'DeleteKeyMaterial', params: { KeyId: keyId } }));
      }
    });
    clear(out, dialog);
    no.focus();
  });
  return b;
}

// ------------------------------------------------------------------ import

const ALGORITHMS = ['RSAES_OAEP_SHA_1', 'RSAES_OAEP_SHA_256', 'RSAES_PKCS1_V1_5', 'RSA_AES_KEY_WRAP_SHA_1', 'RSA_AES_KEY_WRAP_SHA_256'];

/** The OpenSSL commands that make EncryptedKeyMaterial.bin for an algorithm (the seed's for OAEP SHA-1). */
export function opensslCommands(alg: string, keyId: string): string {
  const pub = `publickey_${keyId}.bin`;
  const oaep = (input: string, output: string, md: string) => `openssl pkeyutl -encrypt -in ${input} -out ${output} -inkey ${pub} -keyform DER -pubin -pkeyopt rsa_padding_mode:oaep -pkeyopt rsa_oaep_md:${md} -pkeyopt rsa_mgf1_md:${md}`;
  const lines = ['openssl rand -out KeyMaterial.bin 32'];
  switch (alg) {
    case 'RSAES_OAEP_SHA_1':
      lines.push(`openssl rsautl -encrypt -in KeyMaterial.bin -oaep -inkey ${pub} -keyform DER -pubin -out EncryptedKeyMaterial.bin`);
      break;
    case 'RSAES_PKCS1_V1_5':
      lines.push(`openssl rsautl -encrypt -in KeyMaterial.bin -pkcs -inkey ${pub} -keyform DER -pubin -out EncryptedKeyMaterial.bin`);
      break;
    case 'RSAES_OAEP_SHA_256':
      lines.push(oaep('KeyMaterial.bin', 'EncryptedKeyMaterial.bin', 'sha256'));
      break;
    default: {
      const md = alg.endsWith('SHA_256') ? 'sha256' : 'sha1';
      lines.push('openssl rand -out EphemeralKey.bin 32', oaep('EphemeralKey.bin', 'EncryptedEphemeralKey.bin', md), `openssl enc -id-aes256-wrap-pad -K "$(od -An -tx1 -v EphemeralKey.bin | tr -d ' \\n')" -iv A65959A6 -in KeyMaterial.bin -out WrappedKeyMaterial.bin`, 'cat EncryptedEphemeralKey.bin WrappedKeyMaterial.bin > EncryptedKeyMaterial.bin');
    }
  }
  lines.push('openssl enc -e -base64 -A -in EncryptedKeyMaterial.bin -out EncryptedKeyMaterial_base64.txt');
  return lines.join('\n');
}

function importParamsPage(keyId: string): void {
  const alg = h('select', {}, ...ALGORITHMS.map((a) => h('option', { value: a }, a)));
  const spec = h('select', {}, ...['RSA_2048', 'RSA_3072', 'RSA_4096'].map((s) => h('option', { value: s }, s)));
  const btn = h('button', { type: 'submit' }, 'Get parameters');
  const out = h('div', {});
  const form = h('form', { class: 'card' }, title('Get import parameters'), h('p', {}, 'Key ', h('a', { href: `#/key/${keyId}`, class: 'mono' }, keyId)), field('Wrapping algorithm', alg).row, field('Wrapping key spec', spec).row, btn, out);
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    try {
      const r = await busy('Getting import parameters', () => api('GetParametersForImport', { KeyId: keyId, WrappingAlgorithm: alg.value, WrappingKeySpec: spec.value }), btn);
      const der = b64ToBytes(r.PublicKey);
      const cmds = opensslCommands(alg.value, keyId);
      const copy = h('button', { type: 'button' }, 'Copy commands');
      copy.addEventListener('click', () => void navigator.clipboard?.writeText(cmds).then(() => (copy.textContent = 'Copied')));
      clear(
        out,
        h(
          'div',
          { class: 'ok', role: 'status' },
          h('p', {}, `Import token valid until ${fmtTime(r.TokenExpireTime)}.`, ' Use it with this public key only, for this key only.'),
          h('p', { class: 'actions' },
            h('button', { type: 'button', onclick: () => download(`publickey_${keyId}.bin`, der) }, `Download publickey_${keyId}.bin`),
            h('button', { type: 'button', onclick: () => download(`publickey_${keyId}.pem`, pemOf(r.PublicKey), 'application/x-pem-file') }, `Download publickey_${keyId}.pem`),
            h('button', { type: 'button', onclick: () => download(`token_${keyId}.txt`, r.ImportToken, 'text/plain') }, `Download token_${keyId}.txt`),
          ),
          h('h2', {}, `OpenSSL commands (${alg.value})`),
          h('pre', { class: 'commands' }, cmds),
          copy,
          h('p', {}, 'Keep KeyMaterial.bin safe: kmsd never gives key material back. Then ', h('a', { href: `#/import/${keyId}` }, 'import key material'), '.'),
        ),
      );
    } catch (e) {
      clear(out, errorBox(e));
    }
  });
  clear(view, form);
}

function importPage(keyId: string): void {
  const material = h('input', { type: 'file', name: 'EncryptedKeyMaterial' });
  const tokenFile = h('input', { type: 'file', name: 'ImportTokenFile', accept: '.txt,text/plain' });
  const tokenText = h('textarea', { rows: 3, name: 'ImportToken', spellcheck: 'false' });
  const expiry = h('input', { type: 'datetime-local', name: 'KeyMaterialExpire' });
  const expiryField = field('Expires at (your local time)', expiry);
  expiryField.row.classList.add('hidden');
  const when = radios('Expiry', 'Key material expiry', [
    { value: 'never', label: 'Never' },
    { value: 'at', label: 'At a date and time' },
  ], 'never', (v) => expiryField.row.classList.toggle('hidden', v !== 'at'));
  const btn = h('button', { type: 'submit' }, 'Import');
  const out = h('div', {});
  const form = h(
    'form',
    { class: 'card' },
    title('Import key material'),
    h('p', {}, 'Key ', h('a', { href: `#/key/${keyId}`, class: 'mono' }, keyId)),
    field('Encrypted key material file', material, 'EncryptedKeyMaterial.bin (raw) or EncryptedKeyMaterial_base64.txt: either is detected.').row,
    field('Import token file', tokenFile, `token_${keyId}.txt`).row,
    field('or paste the import token', tokenText).row,
    when.set,
    expiryField.row,
    btn,
    out,
  );
  // The whole submission runs as one busy span from the click on: reading the files is asynchronous
  // too, and a page that looks idle while a call is still to come invites a second click.
  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    void busy('Reading the files', () => submitImport(), btn);
  });
  async function submitImport(): Promise<void> {
    const f = material.files?.[0];
    if (!f) {
      clear(out, h('div', { class: 'error', role: 'alert' }, h('p', {}, 'Encrypted key material file: choose a file.')));
      return;
    }
    let token = tokenText.value.trim();
    const tf = tokenFile.files?.[0];
    if (tf) token = (await tf.text()).trim();
    if (!token) {
      clear(out, h('div', { class: 'error', role: 'alert' }, h('p', {}, 'Import token: choose the token file or paste the token.')));
      return;
    }
    let expireUnix = 0;
    if (when.value() === 'at') {
      const t = Date.parse(expiry.value);
      if (!expiry.value || Number.isNaN(t)) {
        clear(out, h('div', { class: 'error', role: 'alert' }, h('p', {}, 'Expires at: choose a date and time.')));
        return;
      }
      expireUnix = Math.floor(t / 1000);
    }
    const m = await fileAsBase64(f);
    const read = h('p', { class: 'hint' }, `${f.name} read as ${m.how} (${m.bytes} bytes).`);
    try {
      await busy('Importing key material', () => api('ImportKeyMaterial', { KeyId: keyId, EncryptedKeyMaterial: m.b64, ImportToken: token, KeyMaterialExpireUnix: expireUnix }), btn);
      const d = (await busy('Reading the key', () => api('DescribeKey', { KeyId: keyId }))).KeyMetadata;
      clear(out, read, h('div', { class: 'ok', role: 'status' }, h('p', { id: 'import-state' }, `Key material imported. Key state: ${d.KeyState}. Material expires: ${d.MaterialExpireTime ? fmtTime(d.MaterialExpireTime) : 'never'}.`), h('a', { href: `#/key/${keyId}` }, 'Open the key')));
    } catch (e) {
      clear(out, read, errorBox(e, { action: 'ImportKeyMaterial', params: { KeyId: keyId, EncryptedKeyMaterial: m.b64, ImportToken: token, KeyMaterialExpireUnix: String(expireUnix) } }));
    }
  }
  clear(view, form);
}

// ------------------------------------------------------------------ ceremonies

async function ceremoniesPage(): Promise<void> {
  clear(view, title('Ceremonies'));
  let c: Answer;
  try {
    c = await busy('Loading the ceremony', () => api('DescribeCeremony'));
  } catch (e) {
    view.append(errorBox(e));
    return;
  }
  if (!c.Initialized) {
    view.append(h('p', { class: 'empty' }, 'No ceremony is set up: guarded actions run directly. Custodians and the threshold are registered once with ', h('code', {}, 'kmsctl InitCeremony --Custodians id=key.pub,... --Threshold M'), '.'));
    return;
  }
  const custodians = (c.Custodians ?? []) as Answer[];
  view.append(
    h('p', {}, `Threshold: ${c.Threshold} of ${custodians.length} custodians must approve a guarded action.`),
    h('div', { class: 'scroll' }, h('table', {}, h('caption', {}, 'Custodians'), h('thead', {}, h('tr', {}, h('th', { scope: 'col' }, 'Custodian'), h('th', { scope: 'col' }, 'Key fingerprint (SHA-256)'), h('th', { scope: 'col' }, 'Added'))), h('tbody', {}, ...custodians.map((x) => h('tr', {}, h('td', {}, x.CustodianId), h('td', { class: 'mono small' }, x.Fingerprint), h('td', {}, fmtTime(x.AddedAt))))))),
    h('h2', {}, 'Open proposals'),
  );
  const list = h('div', {});
  view.append(list);
  let proposals: Answer[];
  try {
    proposals = (await busy('Loading proposals', () => api('ListProposals', { State: 'Open', PageSize: 50 }))).Proposals?.Proposal ?? [];
  } catch (e) {
    list.append(errorBox(e));
    return;
  }
  if (!proposals.length) list.append(h('p', { class: 'empty' }, 'No open proposals. A guarded action started from a key page offers to create one.'));
  for (const p of proposals) list.append(proposalCard(p, custodians));
}

/** The exact bytes custodians sign (lists leave the document out: it is fetched when asked for). */
async function downloadDocument(proposalId: string, name: string, btn: HTMLButtonElement, out: HTMLElement): Promise<void> {
  try {
    const p = await busy('Fetching the document', () => api('GetProposal', { ProposalId: proposalId }), btn);
    download(name, b64ToBytes(p.Document), 'application/json');
  } catch (e) {
    clear(out, errorBox(e));
  }
}

function proposalCard(p: Answer, custodians: Answer[]): HTMLElement {
  const doc = `proposal_${p.ProposalId}.json`;
  const who = h('select', {}, ...custodians.map((x) => h('option', { value: x.CustodianId }, x.CustodianId)));
  const sig = h('input', { type: 'file', name: 'Signature' });
  const upload = h('button', { type: 'button' }, 'Upload signature');
  const execute = h('button', { type: 'button', disabled: p.Approvals < p.Required }, 'Execute');
  const out = h('div', {});
  const card = h(
    'section',
    { class: 'card proposal', 'aria-label': `Proposal ${p.ProposalId}` },
    h('h3', {}, `${p.Action} `, h('span', { class: 'mono small' }, p.ProposalId)),
    h('dl', { class: 'meta' }, ...([['Key', p.KeyId || '—'], ['Parameters', p.Parameters], ['Requester', p.Requester], ['Approvals', `${p.Approvals} of ${p.Required}`], ['Approved by', (p.Approvers ?? []).filter((a: Answer) => a.Counts).map((a: Answer) => a.CustodianId).join(', ') || '—'], ['Expires', fmtTime(p.ExpiresAt)], ['Document SHA-256', p.DocumentSha256]] as [string, string][]).flatMap(([k, v]) => [h('dt', {}, k), h('dd', {}, v)])),
    h('p', { class: 'actions' }, h('button', { type: 'button', onclick: (ev: Event) => void downloadDocument(p.ProposalId, doc, ev.currentTarget as HTMLButtonElement, out) }, `Download ${doc}`)),
    h('p', { class: 'hint' }, 'Sign it offline with your custodian key:'),
    h('pre', { class: 'commands' }, `openssl pkeyutl -sign -rawin -inkey CUSTODIAN.pem -in ${doc} -out signature_${p.ProposalId}.bin`),
    h('div', { class: 'inline' }, field('Custodian', who).row, field('Signature file (raw or base64)', sig).row, upload),
    execute,
    out,
  );
  upload.addEventListener('click', () => {
    const f = sig.files?.[0];
    if (!f) return clear(out, h('div', { class: 'error', role: 'alert' }, h('p', {}, 'Signature file: choose a file.')));
    // Busy from the click on: the file is read asynchronously before the call goes out.
    void busy('Uploading the signature', async () => {
      try {
        const s = await fileAsBase64(f);
        const r = await api('ApproveProposal', { ProposalId: p.ProposalId, CustodianId: who.value, Signature: s.b64 });
        card.replaceWith(proposalCard(r, custodians));
      } catch (e) {
        clear(out, errorBox(e));
      }
    }, upload);
  });
  execute.addEventListener('click', async () => {
    try {
      const r = await busy('Executing', () => api('ExecuteProposal', { ProposalId: p.ProposalId }), execute);
      clear(card, h('h3', {}, `${p.Action} `, h('span', { class: 'mono small' }, p.ProposalId)), h('p', { class: r.Outcome === 'Succeeded' ? 'ok' : 'error', role: 'status' }, `Executed: ${r.Outcome}. State: ${r.State}.`), p.KeyId ? h('a', { href: `#/key/${p.KeyId}` }, 'Open the key') : null);
    } catch (e) {
      clear(out, errorBox(e));
    }
  });
  return card;
}

// ------------------------------------------------------------------ audit

async function auditPage(): Promise<void> {
  const verify = h('button', { type: 'button' }, 'Verify chain');
  const verdict = h('div', {});
  const list = h('div', {});
  clear(view, title('Audit'), h('p', { class: 'actions' }, verify), verdict, list);
  verify.addEventListener('click', async () => {
    try {
      const v = await busy('Verifying the audit chain', () => api('VerifyAudit'), verify);
      clear(
        verdict,
        v.Valid
          ? h('p', { class: 'ok', role: 'status' }, `Chain valid: ${v.RecordsChecked} records and ${v.CheckpointsChecked} token checkpoints checked (${v.UncheckpointedRecords} records after the last checkpoint).`)
          : h('div', { class: 'error', role: 'alert' }, h('p', { class: 'error-title' }, `Chain broken at record ${v.FirstBadSeq}.`), h('p', {}, v.Problem)),
      );
    } catch (e) {
      clear(verdict, errorBox(e));
    }
  });
  const size = 25;
  /** The oldest server page shown; 0 for the newest view (the last page, and the one before when it is short). */
  let cur = 0;
  /** The oldest server page of the newest view when last shown: Newer from just below it is the newest view. */
  let newestFrom = 0;
  const load = async () => {
    try {
      const got = await busy('Loading audit events', async () => {
        const total = Number((await api('ListAuditEvents', { PageSize: 1 })).TotalCount ?? 0);
        const last = Math.max(1, Math.ceil(total / size));
        const fetchPage = async (n: number) => ((await api('ListAuditEvents', { PageNumber: n, PageSize: size })).Events?.Event ?? []) as Answer[];
        const newestView = cur === 0 || cur >= last;
        let from = newestView ? last : cur;
        let rows = await fetchPage(from);
        // The newest page is often short: the one before it fills the view.
        if (newestView && last > 1 && rows.length < size) rows = [...(await fetchPage(--from)), ...rows];
        cur = newestView ? 0 : from;
        if (newestView) newestFrom = from;
        return { rows: rows.reverse(), from, total };
      });
      if (!got.rows.length) return clear(list, h('p', { class: 'empty' }, 'No audit events yet.'));
      const table = h(
        'table',
        { class: 'cards' },
        h('caption', {}, 'Recent events, newest first'),
        h('thead', {}, h('tr', {}, ...['Seq', 'Time', 'Principal', 'Action', 'Key', 'Outcome'].map((t) => h('th', { scope: 'col' }, t)))),
        h('tbody', {}, ...got.rows.map((e) => h('tr', {}, h('td', { 'data-label': 'Seq' }, String(e.Seq)), h('td', { 'data-label': 'Time', class: 'nowrap' }, fmtTime(e.Time)), h('td', { 'data-label': 'Principal', class: 'wrap' }, e.Principal), h('td', { 'data-label': 'Action' }, e.Action), h('td', { class: 'mono small', 'data-label': 'Key' }, e.KeyId || ''), h('td', { 'data-label': 'Outcome' }, h('span', { class: e.Outcome === 'ok' ? 'outcome ok-text' : 'outcome bad-text' }, e.Outcome))))),
      );
      const newest = cur === 0;
      const newer = h('button', { type: 'button', disabled: newest, onclick: () => ((cur = cur + 1 >= newestFrom ? 0 : cur + 1), void load()) }, 'Newer');
      const older = h('button', { type: 'button', disabled: got.from <= 1, onclick: () => ((cur = got.from - 1), void load()) }, 'Older');
      const first = got.rows[got.rows.length - 1]?.Seq;
      const lastSeq = got.rows[0]?.Seq;
      clear(list, h('div', { class: 'scroll' }, table), h('div', { class: 'pager' }, newer, h('span', {}, `Records ${first}–${lastSeq} of ${got.total}`), older));
    } catch (e) {
      clear(list, errorBox(e));
    }
  };
  await load();
}

// ------------------------------------------------------------------ routing

async function route(): Promise<void> {
  if (!cred) return signInPage();
  const hash = location.hash || '#/keys';
  const [, page, arg] = /^#\/([a-z-]+)(?:\/(.+))?$/.exec(hash) ?? [];
  renderNav(`#/${page === 'key' || page === 'import' || page === 'import-params' ? 'keys' : page}`);
  const id = arg ? decodeURIComponent(arg) : '';
  switch (page) {
    case 'create':
      return createPage();
    case 'key':
      return keyPage(id);
    case 'import-params':
      return importParamsPage(id);
    case 'import':
      return importPage(id);
    case 'ceremonies':
      return ceremoniesPage();
    case 'audit':
      return auditPage();
    default:
      return keysPage();
  }
}

root.append(h('header', {}, nav), progress, view);
window.addEventListener('hashchange', () => void route().then(() => view.focus({ preventScroll: true })));
void route();
