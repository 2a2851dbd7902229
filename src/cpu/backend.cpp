// STUB: replaced by the CPU backend work.
#include "cpu/backend.h"
namespace flashattn::cpu {
Status mha_fwd(const FwdParams&) { return Status::not_supported("cpu fwd: not yet"); }
Status mha_bwd(const BwdParams&) { return Status::not_supported("cpu bwd: not yet"); }
Status mha_fwd_kvcache(const KVCacheParams&) { return Status::not_supported("cpu kvcache: not yet"); }
Status mha_combine(const CombineParams&) { return Status::not_supported("cpu combine: not yet"); }
int num_threads() { return 1; }
const char* isa() { return "portable"; }
}  // namespace flashattn::cpu
