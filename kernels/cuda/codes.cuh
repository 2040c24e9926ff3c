// Codes of the activations and losses, the margin rule, the fault bits and exp's and log1p's constants of the
// CUDA kernels. Generated from lgd/activations.py, lgd/losses.py, lgd/stepsize.py and lgd/kernels/polynomials.py
// by lgd.kernels.cuda_codes: do not edit; after changing one of them, run `python -m lgd.kernels.cuda_codes`
// to rewrite it.
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

// lgd.kernels.polynomials: the float64 exp's and log1p's constants (formulas.cuh; numba_cpu/exp_log1p.py
// evaluates the same ones and says how they were fitted).
constexpr double EXP_INV_LN2 = 1.4426950408889634;
constexpr double EXP_LN2_HI = 0.6931471803691238;
constexpr double EXP_LN2_LO = 1.9082149292705877e-10;
constexpr double EXP_SHIFTER = 6755399441057790.0;
constexpr double EXP_P1 = 0.16666666666666666;
constexpr double EXP_P2 = 0.041666666666651364;
constexpr double EXP_P3 = 0.008333333333332157;
constexpr double EXP_P4 = 0.0013888888905871347;
constexpr double EXP_P5 = 0.0001984126985433077;
constexpr double EXP_P6 = 2.4801536409064087e-05;
constexpr double EXP_P7 = 2.7557280082684685e-06;
constexpr double EXP_P8 = 2.761379555451986e-07;
constexpr double EXP_P9 = 2.509554598170022e-08;
constexpr double LOG1P_G0 = 0.6666666666666666;
constexpr double LOG1P_G1 = 0.40000000000014585;
constexpr double LOG1P_G2 = 0.2857142856710876;
constexpr double LOG1P_G3 = 0.22222222717427864;
constexpr double LOG1P_G4 = 0.18181789436132859;
constexpr double LOG1P_G5 = 0.15385570064958623;
constexpr double LOG1P_G6 = 0.13314144209654935;
constexpr double LOG1P_G7 = 0.12001072809590713;
constexpr double LOG1P_G8 = 0.08800738486144674;
constexpr double LOG1P_G9 = 0.1616404561194353;
constexpr long long EXP_SHIFTER_BITS = 0x4338000000000000LL;

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
