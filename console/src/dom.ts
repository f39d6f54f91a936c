// A few DOM helpers: elements are built with textContent only (never innerHTML), so nothing kmsd
// or a user typed is ever parsed as markup.

type Child = Node | string | null | undefined | false;
type Props = Record<string, string | number | boolean | EventListener | undefined | null>;

export function h<K extends keyof HTMLElementTagNameMap>(tag: K, props: Props = {}, ...children: (Child | Child[])[]): HTMLElementTagNameMap[K] {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2).toLowerCase(), v as EventListener);
    else if (k === 'class') el.className = String(v);
    else if (v === true) el.setAttribute(k, '');
    else el.setAttribute(k, String(v));
  }
  append(el, children);
  return el;
}

export function append(el: Element, children: (Child | Child[])[]): void {
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(typeof c === 'string' ? document.createTextNode(c) : c);
  }
}

export function clear(el: Element, ...children: (Child | Child[])[]): void {
  el.replaceChildren();
  append(el, children);
}

let ids = 0;
/** A labelled form field: the label names the control (for= its id), a hint and an error live below it. */
export function field(label: string, control: HTMLElement, hint?: string): { row: HTMLElement; error: HTMLElement } {
  const id = control.id || `f${++ids}`;
  control.id = id;
  const error = h('p', { class: 'field-error', id: `${id}-error`, 'aria-live': 'polite' });
  const hintEl = hint ? h('p', { class: 'hint', id: `${id}-hint` }, hint) : null;
  control.setAttribute('aria-describedby', [hintEl ? `${id}-hint` : '', `${id}-error`].filter(Boolean).join(' '));
  return { row: h('div', { class: 'field' }, h('label', { for: id }, label), control, hintEl, error), error };
}

/** A group of radio buttons in a fieldset with a legend. */
export function radios(name: string, legend: string, options: { value: string; label: string; note?: string }[], checked: string, onChange?: (v: string) => void): { set: HTMLFieldSetElement; value(): string } {
  const set = h('fieldset', { class: 'radios' }, h('legend', {}, legend));
  for (const o of options) {
    const id = `${name}-${o.value.replace(/[^A-Za-z0-9]/g, '_')}`;
    const input = h('input', { type: 'radio', name, id, value: o.value, checked: o.value === checked, onchange: () => onChange?.(o.value) });
    set.append(h('div', { class: 'radio' }, input, h('label', { for: id }, o.label), o.note ? h('span', { class: 'hint' }, ` ${o.note}`) : null));
  }
  return { set, value: () => (set.querySelector('input:checked') as HTMLInputElement | null)?.value ?? '' };
}

/** Offers bytes or text as a file download named `name` (a blob: link, so the CSP needs nothing extra). */
export function download(name: string, data: Uint8Array | string, type = 'application/octet-stream'): void {
  const blob = new Blob([data as BlobPart], { type });
  const url = URL.createObjectURL(blob);
  const a = h('a', { href: url, download: name, class: 'hidden' });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}

export function b64ToBytes(b64: string): Uint8Array {
  const s = atob(b64);
  const out = new Uint8Array(s.length);
  for (let i = 0; i < s.length; i++) out[i] = s.charCodeAt(i);
  return out;
}

export function bytesToB64(bytes: Uint8Array): string {
  let s = '';
  for (let i = 0; i < bytes.length; i += 0x8000) s += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(s);
}

/**
 * A file the user gave, as base64: base64 text (what `openssl enc -base64` writes) is taken as it
 * is, anything else as raw bytes. Says which it was, for the page to show.
 */
export async function fileAsBase64(file: File): Promise<{ b64: string; how: string; bytes: number }> {
  const bytes = new Uint8Array(await file.arrayBuffer());
  const text = new TextDecoder('latin1').decode(bytes).replace(/\s+/g, '');
  if (text.length > 0 && text.length % 4 === 0 && /^[A-Za-z0-9+/]+={0,2}$/.test(text)) {
    try {
      const n = atob(text).length;
      return { b64: text, how: 'base64 text', bytes: n };
    } catch {
      // not base64 after all: raw bytes below
    }
  }
  return { b64: bytesToB64(bytes), how: 'raw binary', bytes: bytes.length };
}

export function pemOf(derB64: string): string {
  const lines = derB64.match(/.{1,64}/g) ?? [];
  return `-----BEGIN PUBLIC KEY-----\n${lines.join('\n')}\n-----END PUBLIC KEY-----\n`;
}
