// Codes of the activations and losses, the margin rule and the fault bits of the CUDA kernels.
// Generated from lgd/activations.py and lgd/losses.py by lgd.kernels.cuda_codes: do not edit;
// after changing a catalog, run `python -m lgd.kernels.cuda_codes` to rewrite it.
#pragma once

namespace lgd {

// lgd.activations.CODES
constexpr int ACT_IDENTITY = 0;
constexpr int ACT_RELU = 1;
constexpr int ACT_LEAKY_RELU = 2;
constexpr int ACT_SOFTPLUS = 3;
constexpr int ACT_LEAKY_SOFTPLUS = 4;
constexpr int ACT_GELU = 5;
constexpr int ACT_SILU = 6;
constexpr int ACT_TANH = 7;

// lgd.losses.CODES
constexpr int LOSS_LOGISTIC = 0;
constexpr int LOSS_EXPONENTIAL = 1;
constexpr int LOSS_FLATTENED_EXPONENTIAL = 2;
constexpr int LOSS_FLATTENED_POLYNOMIAL = 3;
constexpr int LOSS_SQUARED = 4;

// lgd.stepsize's rules (the codes of lgd.stepsize.stepsize_at)
constexpr int RULE_CONSTANT = 0;
constexpr int RULE_WARMUP = 1;
constexpr int RULE_STEP_DECAY = 2;
constexpr int RULE_COSINE = 3;
constexpr int RULE_ADAPTIVE = 4;
constexpr int RULE_POLYAK = 5;
constexpr int RULE_NORMALIZED = 6;
constexpr int RULE_INVERSE_SHARPNESS = 7;

// A kernel that meets a code it has no formula for sets its bit in the fault flag and writes NaN.
constexpr int FAULT_UNKNOWN_ACTIVATION = 1;
constexpr int FAULT_UNKNOWN_LOSS = 2;

// lgd.losses.MARGIN_CODES: these losses take the margin u = y f, the others the residual r = f - y.
__host__ __device__ constexpr bool is_margin_loss(int code) {
    switch (code) {
    case LOSS_LOGISTIC:
    case LOSS_EXPONENTIAL:
    case LOSS_FLATTENED_EXPONENTIAL:
    case LOSS_FLATTENED_POLYNOMIAL:
        return true;
    default:
        return false;
    }
}

}  // namespace lgd
