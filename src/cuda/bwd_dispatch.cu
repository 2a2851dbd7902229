// STUB: replaced by the SM80 backward kernel work.
#include "cuda/bwd.h"
namespace flashattn::cuda {
Status run_mha_bwd(const BwdParams&) {
  return Status::not_supported("the backward pass on the GPU is not implemented yet (issue 4)");
}
}  // namespace flashattn::cuda
