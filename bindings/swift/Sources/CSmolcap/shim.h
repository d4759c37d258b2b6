/* The C API for Swift's CSmolcap module (include path from pkg-config smolcap). */
#ifndef SMOLCAP_SWIFT_SHIM_H
#define SMOLCAP_SWIFT_SHIM_H
#include <smolcap.h>
#endif
