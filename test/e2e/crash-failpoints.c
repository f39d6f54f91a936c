/*
 * A PKCS#11 pass-through module for the crash harness (test/e2e/crash.test.ts). It forwards every
 * call to the real module (KMSD_REAL_PKCS11, default SoftHSM2) and kills its own process with
 * SIGKILL at one named point, so the harness can crash kmsd exactly inside the windows that the
 * "token object first, metadata commit second" ordering is about:
 *
 *   KMSD_FAILPOINT=C_GenerateKey:N      after the Nth token-object C_GenerateKey returns  (CreateKey, CreateKeyVersion)
 *   KMSD_FAILPOINT=C_GenerateKeyPair:N  after the Nth token-object key pair is generated (GetParametersForImport)
 *   KMSD_FAILPOINT=C_CopyObject:N       after the Nth copy into a token object            (ImportKeyMaterial)
 *   KMSD_FAILPOINT=C_DestroyObject:N    before the Nth token object is destroyed          (DeleteKeyMaterial, end of deletion window)
 *   KMSD_FAILPOINT=C_Sign:N             after the Nth signature is made                   (an audit checkpoint, inside the
 *                                       transaction of the change whose record crossed the checkpoint threshold)
 *
 * Session objects (transient keys, probes) do not count. Built by the test with
 *   cc -shared -fPIC -I/usr/include/p11-kit-1 -o failpoints.so crash-failpoints.c -ldl
 */
#include <dlfcn.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <p11-kit/pkcs11.h>

static CK_FUNCTION_LIST_PTR real = NULL;
static CK_FUNCTION_LIST shim;
static char point[64] = "";
static long countdown = 0;

static int template_is_token(CK_ATTRIBUTE_PTR t, CK_ULONG n) {
  for (CK_ULONG i = 0; i < n; i++) {
    if (t[i].type == CKA_TOKEN && t[i].pValue != NULL && t[i].ulValueLen >= 1) return *(CK_BBOOL *)t[i].pValue != 0;
  }
  return 0;
}

static void reached(const char *name) {
  if (countdown <= 0 || strcmp(point, name) != 0) return;
  if (--countdown == 0) {
    fprintf(stderr, "crash-failpoints: SIGKILL at %s\n", name);
    fflush(stderr);
    raise(SIGKILL);
  }
}

static CK_RV fp_GenerateKey(CK_SESSION_HANDLE s, CK_MECHANISM_PTR m, CK_ATTRIBUTE_PTR t, CK_ULONG n, CK_OBJECT_HANDLE_PTR h) {
  CK_RV rv = real->C_GenerateKey(s, m, t, n, h);
  if (rv == CKR_OK && template_is_token(t, n)) reached("C_GenerateKey");
  return rv;
}

static CK_RV fp_GenerateKeyPair(CK_SESSION_HANDLE s, CK_MECHANISM_PTR m, CK_ATTRIBUTE_PTR pub, CK_ULONG npub, CK_ATTRIBUTE_PTR priv, CK_ULONG npriv,
                                CK_OBJECT_HANDLE_PTR hpub, CK_OBJECT_HANDLE_PTR hpriv) {
  CK_RV rv = real->C_GenerateKeyPair(s, m, pub, npub, priv, npriv, hpub, hpriv);
  if (rv == CKR_OK && template_is_token(priv, npriv)) reached("C_GenerateKeyPair");
  return rv;
}

static CK_RV fp_CopyObject(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE o, CK_ATTRIBUTE_PTR t, CK_ULONG n, CK_OBJECT_HANDLE_PTR h) {
  CK_RV rv = real->C_CopyObject(s, o, t, n, h);
  if (rv == CKR_OK && template_is_token(t, n)) reached("C_CopyObject");
  return rv;
}

static CK_RV fp_DestroyObject(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE o) {
  CK_BBOOL token = CK_FALSE;
  CK_ATTRIBUTE a = {CKA_TOKEN, &token, sizeof(token)};
  if (real->C_GetAttributeValue(s, o, &a, 1) == CKR_OK && token) reached("C_DestroyObject");
  return real->C_DestroyObject(s, o);
}

static CK_RV fp_Sign(CK_SESSION_HANDLE s, CK_BYTE_PTR d, CK_ULONG n, CK_BYTE_PTR sig, CK_ULONG_PTR nsig) {
  CK_RV rv = real->C_Sign(s, d, n, sig, nsig);
  /* A length query (no output buffer) is not a signature. */
  if (rv == CKR_OK && sig != NULL) reached("C_Sign");
  return rv;
}

CK_RV C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR out) {
  if (out == NULL) return CKR_ARGUMENTS_BAD;
  if (real == NULL) {
    const char *path = getenv("KMSD_REAL_PKCS11");
    void *dl = dlopen(path && *path ? path : "/usr/lib/softhsm/libsofthsm2.so", RTLD_NOW | RTLD_LOCAL);
    if (dl == NULL) return CKR_GENERAL_ERROR;
    CK_C_GetFunctionList get = (CK_C_GetFunctionList)dlsym(dl, "C_GetFunctionList");
    if (get == NULL || get(&real) != CKR_OK) return CKR_GENERAL_ERROR;
    shim = *real;
    shim.C_GenerateKey = fp_GenerateKey;
    shim.C_GenerateKeyPair = fp_GenerateKeyPair;
    shim.C_CopyObject = fp_CopyObject;
    shim.C_DestroyObject = fp_DestroyObject;
    shim.C_Sign = fp_Sign;
    const char *fp = getenv("KMSD_FAILPOINT");
    if (fp != NULL) {
      const char *colon = strchr(fp, ':');
      size_t len = colon ? (size_t)(colon - fp) : strlen(fp);
      if (len < sizeof(point)) {
        memcpy(point, fp, len);
        point[len] = 0;
        countdown = colon ? atol(colon + 1) : 1;
      }
    }
  }
  *out = &shim;
  return CKR_OK;
}
