// STUB: replaced by the CLI work.
#include <cstdio>
#include "flashattn/flashattn.h"
int main() { auto i = flashattn::build_info(); std::printf("flashattn %s cuda=%d\n", i.version.c_str(), int(i.cuda)); return 0; }
