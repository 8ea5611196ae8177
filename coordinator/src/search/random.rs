//! Random search: each parameter maps one uniform draw of the trial's stream through its
//! inverse CDF.

use rand::Rng;
use tunefleet_proto::Value;

use super::space::{build_point, value_at};
use super::trial_stream;
use crate::spec::ParameterSpec;

/// Draws trial `index` from its own stream, one draw per parameter in declaration order.
///
/// An inactive parameter still takes its draw, so a condition never shifts the draws of the
/// parameters after it.
pub(super) fn random_point(
    parameters: &[ParameterSpec],
    seed: u64,
    index: u32,
) -> Vec<(String, Value)> {
    let mut rng = trial_stream(seed, index);
    let draws: Vec<f64> = parameters.iter().map(|_| rng.random()).collect();
    build_point(parameters, |position, parameter, _| {
        value_at(&parameter.domain, draws[position])
    })
}
