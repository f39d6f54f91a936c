// The mechanisms the configuration may tell kmsd not to use (KMS_DISABLE_MECHANISMS), by name. Each
// is one kmsd can do without: the capability probe then takes another path, or kmsd refuses what
// needs it at CreateKey / GetParametersForImport time. For a token whose implementation of one is
// known to be broken or is forbidden by the site's policy, and to rehearse a token that lacks it.
// No pkcs11js here: src/config.ts validates the names before the token is opened.

export const DISABLEABLE_MECHANISMS = ['CKM_AES_GCM', 'CKM_AES_ECB', 'CKM_AES_KEY_WRAP_PAD', 'CKM_RSA_PKCS', 'CKM_RSA_PKCS_OAEP', 'CKM_RSA_X_509'] as const;
export type DisableableMechanism = (typeof DISABLEABLE_MECHANISMS)[number];

export function isDisableableMechanism(name: string): name is DisableableMechanism {
  return (DISABLEABLE_MECHANISMS as readonly string[]).includes(name);
}
