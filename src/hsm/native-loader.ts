// Opens the native AES-GCM addon on the daemon's token, or says why it cannot. The daemon falls
// back to pkcs11js when the addon is absent (for example a build without a compiler).

import type { HsmToken } from './token';
import type { NativeGcm } from '../kms/keyring';

export interface NativeAddonApi extends NativeGcm {
  close(): void;
  stats(): { encrypt: number; decrypt: number; sessionsReopened: number; threads: number };
}

export interface NativeHandle {
  addon: NativeAddonApi | null;
  reason?: string;
}

export function loadNative(token: HsmToken, threads?: number): NativeHandle {
  try {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const mod = require('./native-addon') as {
      loadNativeAddon(): { open(o: { modulePath: string; slotId: number; threads?: number }): NativeAddonApi } | null;
      nativeAddonLoadError?(): string | undefined;
    };
    const api = mod.loadNativeAddon();
    if (!api) return { addon: null, reason: mod.nativeAddonLoadError?.() ?? 'addon not built' };
    return { addon: api.open({ modulePath: token.modulePath, slotId: token.slotId, threads }) };
  } catch (e) {
    return { addon: null, reason: (e as Error).message };
  }
}
