// PKCS#11 return value -> its CKR_ name, for error codes that JS can branch on.
#ifndef KMSD_NATIVE_CKR_NAMES_H_
#define KMSD_NATIVE_CKR_NAMES_H_

#include <string>

#include "pkcs11_min.h"

namespace kmsd {

// "CKR_ENCRYPTED_DATA_INVALID" for a known value; "CKR_0x%08lx" (vendor-defined or unknown) otherwise.
std::string CkrName(CK_RV rv);

}  // namespace kmsd

#endif  // KMSD_NATIVE_CKR_NAMES_H_
