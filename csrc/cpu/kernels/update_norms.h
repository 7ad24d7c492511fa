// Per-run sums behind FusedOptimizer.update_ratios(): ||update|| / ||param||.
#pragma once

namespace fastopt::cpu {

// The squared change of the parameter over one step, and the squared
// parameter before it, summed over a run of elements.
struct UpdateNorms {
  double update_sq = 0.0;
  double param_sq = 0.0;
};

}  // namespace fastopt::cpu
