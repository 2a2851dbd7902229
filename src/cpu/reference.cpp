// STUB: replaced by the reference work.
#include "cpu/reference.h"
namespace flashattn::ref {
Status mha_fwd(const FwdParams&, const Options&) { return Status::not_supported("ref fwd: not yet"); }
Status mha_bwd(const BwdParams&, const Options&) { return Status::not_supported("ref bwd: not yet"); }
Status mha_fwd_kvcache(const KVCacheParams&) { return Status::not_supported("ref kvcache: not yet"); }
Status mha_combine(const CombineParams&) { return Status::not_supported("ref combine: not yet"); }
}  // namespace flashattn::ref
