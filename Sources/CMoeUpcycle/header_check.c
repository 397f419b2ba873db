/* Compiles the public header once as part of the library build, so the C
 * target that exposes it to Swift has a translation unit. */
#include "moeupcycle.h"
