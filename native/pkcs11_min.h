// A minimal PKCS#11 v2.40 header: only the types, constants and function-list entries the addon
// uses, written from the OASIS specification so the build needs nothing from a vendor or the net.
//
// ABI notes (Unix): CK_ULONG is `unsigned long` (64-bit on LP64), structures use the platform's
// natural alignment (no #pragma pack; that is a Windows-only convention of the spec), and function
// pointers use the default calling convention.
#ifndef KMSD_NATIVE_PKCS11_MIN_H_
#define KMSD_NATIVE_PKCS11_MIN_H_

extern "C" {

typedef unsigned char CK_BYTE;
typedef CK_BYTE CK_BBOOL;
typedef unsigned long CK_ULONG;
typedef CK_ULONG CK_FLAGS;
typedef CK_ULONG CK_RV;
typedef CK_ULONG CK_SLOT_ID;
typedef CK_ULONG CK_SESSION_HANDLE;
typedef CK_ULONG CK_OBJECT_HANDLE;
typedef CK_ULONG CK_MECHANISM_TYPE;
typedef CK_ULONG CK_USER_TYPE;
typedef CK_ULONG CK_NOTIFICATION;
typedef CK_BYTE* CK_BYTE_PTR;
typedef CK_ULONG* CK_ULONG_PTR;
typedef void* CK_VOID_PTR;

#define CK_INVALID_HANDLE 0UL

#define CKF_RW_SESSION 0x00000002UL
#define CKF_SERIAL_SESSION 0x00000004UL
#define CKF_OS_LOCKING_OK 0x00000002UL

#define CKM_AES_GCM 0x00001087UL

typedef struct CK_VERSION {
  CK_BYTE major;
  CK_BYTE minor;
} CK_VERSION;

typedef struct CK_MECHANISM {
  CK_MECHANISM_TYPE mechanism;
  CK_VOID_PTR pParameter;
  CK_ULONG ulParameterLen;
} CK_MECHANISM;

// The v2.40 errata layout with ulIvBits, as SoftHSM 2.6.1 (and most current modules) declare it.
// The original v2.40 header lacked ulIvBits; a module built against that one would reject this
// structure's size with CKR_ARGUMENTS_BAD / CKR_MECHANISM_PARAM_INVALID.
typedef struct CK_GCM_PARAMS {
  CK_BYTE_PTR pIv;
  CK_ULONG ulIvLen;
  CK_ULONG ulIvBits;
  CK_BYTE_PTR pAAD;
  CK_ULONG ulAADLen;
  CK_ULONG ulTagBits;
} CK_GCM_PARAMS;

typedef CK_RV (*CK_CREATEMUTEX)(CK_VOID_PTR* ppMutex);
typedef CK_RV (*CK_DESTROYMUTEX)(CK_VOID_PTR pMutex);
typedef CK_RV (*CK_LOCKMUTEX)(CK_VOID_PTR pMutex);
typedef CK_RV (*CK_UNLOCKMUTEX)(CK_VOID_PTR pMutex);

typedef struct CK_C_INITIALIZE_ARGS {
  CK_CREATEMUTEX CreateMutex;
  CK_DESTROYMUTEX DestroyMutex;
  CK_LOCKMUTEX LockMutex;
  CK_UNLOCKMUTEX UnlockMutex;
  CK_FLAGS flags;
  CK_VOID_PTR pReserved;
} CK_C_INITIALIZE_ARGS;

typedef CK_RV (*CK_NOTIFY)(CK_SESSION_HANDLE hSession, CK_NOTIFICATION event, CK_VOID_PTR pApplication);

// Entries of CK_FUNCTION_LIST we never call are typed as opaque pointers; only their position
// matters. The list is declared up to C_DecryptFinal, the last entry we need: the module owns the
// (longer) real table and we only read through a pointer to it, so a prefix has the same layout.
typedef void (*CK_UNUSED_FN)(void);

typedef struct CK_FUNCTION_LIST_PREFIX {
  CK_VERSION version;
  CK_RV (*C_Initialize)(CK_VOID_PTR pInitArgs);
  CK_UNUSED_FN C_Finalize;
  CK_UNUSED_FN C_GetInfo;
  CK_UNUSED_FN C_GetFunctionList;
  CK_UNUSED_FN C_GetSlotList;
  CK_UNUSED_FN C_GetSlotInfo;
  CK_UNUSED_FN C_GetTokenInfo;
  CK_UNUSED_FN C_GetMechanismList;
  CK_UNUSED_FN C_GetMechanismInfo;
  CK_UNUSED_FN C_InitToken;
  CK_UNUSED_FN C_InitPIN;
  CK_UNUSED_FN C_SetPIN;
  CK_RV (*C_OpenSession)(CK_SLOT_ID slotID, CK_FLAGS flags, CK_VOID_PTR pApplication, CK_NOTIFY Notify,
                         CK_SESSION_HANDLE* phSession);
  CK_RV (*C_CloseSession)(CK_SESSION_HANDLE hSession);
  CK_UNUSED_FN C_CloseAllSessions;
  CK_UNUSED_FN C_GetSessionInfo;
  CK_UNUSED_FN C_GetOperationState;
  CK_UNUSED_FN C_SetOperationState;
  CK_UNUSED_FN C_Login;
  CK_UNUSED_FN C_Logout;
  CK_UNUSED_FN C_CreateObject;
  CK_UNUSED_FN C_CopyObject;
  CK_UNUSED_FN C_DestroyObject;
  CK_UNUSED_FN C_GetObjectSize;
  CK_UNUSED_FN C_GetAttributeValue;
  CK_UNUSED_FN C_SetAttributeValue;
  CK_UNUSED_FN C_FindObjectsInit;
  CK_UNUSED_FN C_FindObjects;
  CK_UNUSED_FN C_FindObjectsFinal;
  CK_RV (*C_EncryptInit)(CK_SESSION_HANDLE hSession, CK_MECHANISM* pMechanism, CK_OBJECT_HANDLE hKey);
  CK_RV (*C_Encrypt)(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pData, CK_ULONG ulDataLen, CK_BYTE_PTR pEncryptedData,
                     CK_ULONG_PTR pulEncryptedDataLen);
  CK_UNUSED_FN C_EncryptUpdate;
  CK_UNUSED_FN C_EncryptFinal;
  CK_RV (*C_DecryptInit)(CK_SESSION_HANDLE hSession, CK_MECHANISM* pMechanism, CK_OBJECT_HANDLE hKey);
  CK_RV (*C_Decrypt)(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pEncryptedData, CK_ULONG ulEncryptedDataLen,
                     CK_BYTE_PTR pData, CK_ULONG_PTR pulDataLen);
  CK_UNUSED_FN C_DecryptUpdate;
  CK_UNUSED_FN C_DecryptFinal;
} CK_FUNCTION_LIST_PREFIX;

typedef CK_RV (*CK_C_GetFunctionList)(CK_FUNCTION_LIST_PREFIX** ppFunctionList);

// Return values (v2.40 §3.6) the workers branch on. Errors go to JS as the bare value; the one
// table naming and classifying every value is src/hsm/errors.ts.
#define CKR_OK 0x00000000UL
#define CKR_DEVICE_REMOVED 0x00000032UL
#define CKR_OPERATION_ACTIVE 0x00000090UL
#define CKR_SESSION_CLOSED 0x000000B0UL
#define CKR_SESSION_HANDLE_INVALID 0x000000B3UL
#define CKR_BUFFER_TOO_SMALL 0x00000150UL
#define CKR_CRYPTOKI_ALREADY_INITIALIZED 0x00000191UL

}  // extern "C"

#endif  // KMSD_NATIVE_PKCS11_MIN_H_
