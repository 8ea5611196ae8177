//! Trial generation: grid and random search, both pure functions of (spec, trial index).
//!
//! Because a trial's parameters depend only on the spec and its index, the search's whole state
//! is the number of trials created so far, and any number of workers finishing in any order
//! yields the same list of trials.

use tunefleet_proto::Value;

use crate::spec::SweepSpec;

/// Returns how many trials the sweep will create: `max_trials`, or the grid's size if smaller.
pub fn planned_trials(spec: &SweepSpec) -> u32 {
    let _ = spec;
    todo!()
}

/// Returns the parameters of trial `index` in declaration order, or `None` past the plan.
pub fn trial_params(spec: &SweepSpec, index: u32) -> Option<Vec<(String, Value)>> {
    let _ = (spec, index);
    todo!()
}

/// Returns the training seed of trial `index`, derived from the search seed.
pub fn trial_seed(spec: &SweepSpec, index: u32) -> u64 {
    let _ = (spec, index);
    todo!()
}
