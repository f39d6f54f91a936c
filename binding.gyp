{
  "targets": [
    {
      "target_name": "kmsd_native",
      "sources": ["native/addon.cc", "native/gcm_pool.cc"],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")"],
      "defines": ["NAPI_VERSION=8", "NODE_ADDON_API_DISABLE_CPP_EXCEPTIONS"],
      "cflags_cc": ["-std=c++17", "-O2", "-g", "-Wall", "-Wextra", "-Wno-unused-parameter"],
      "ldflags": ["-pthread"],
      "libraries": ["-ldl"]
    }
  ]
}
