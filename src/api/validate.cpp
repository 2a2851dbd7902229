// STUB: replaced by the validation work.
#include "api/validate.h"
namespace flashattn::detail {
Status validate_fwd(const FwdParams&, Backend, bool) { return Status::ok_status(); }
Status validate_bwd(const BwdParams&, Backend, bool) { return Status::ok_status(); }
Status validate_kvcache(const KVCacheParams&, Backend) { return Status::ok_status(); }
Status validate_combine(const CombineParams&, Backend) { return Status::ok_status(); }
}  // namespace flashattn::detail
