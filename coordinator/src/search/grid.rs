//! Grid search: trial `index` is a mixed-radix number whose last digit is the last declared
//! parameter, so the last parameter varies fastest and the product is never built.

use tunefleet_proto::Value;

use crate::spec::{Domain, ParameterSpec};

/// Returns the number of grid points: the product of the domain sizes, saturating at u64::MAX.
///
/// `None` when a parameter has a continuous distribution. No parameters give one empty point.
pub(crate) fn grid_size(parameters: &[ParameterSpec]) -> Option<u64> {
    parameters.iter().try_fold(1_u64, |product, parameter| {
        domain_size(&parameter.domain).map(|size| product.saturating_mul(size))
    })
}

/// Returns how many points a grid visits in `domain`, or `None` for a continuous distribution.
pub(super) fn domain_size(domain: &Domain) -> Option<u64> {
    match *domain {
        Domain::Values(ref values) | Domain::Weighted { ref values, .. } => {
            Some(values.len() as u64)
        }
        Domain::Constant(_) => Some(1),
        Domain::Int { min, max, step } => Some(int_count(min, max, step)),
        Domain::LogInt { min, max } => Some(int_count(min, max, 1)),
        Domain::Uniform { .. }
        | Domain::LogUniform { .. }
        | Domain::Normal { .. }
        | Domain::LogNormal { .. } => None,
    }
}

/// Counts min, min + step, ... up to max, saturating at u64::MAX.
pub(super) fn int_count(min: i64, max: i64, step: i64) -> u64 {
    if max < min || step < 1 {
        return 0;
    }
    let count = (i128::from(max) - i128::from(min)) / i128::from(step) + 1;
    u64::try_from(count).unwrap_or(u64::MAX)
}

/// Returns the `position`-th point of an int domain. The caller keeps `position` below
/// `int_count`.
pub(super) fn int_at(min: i64, step: i64, position: u64) -> i64 {
    let value = i128::from(min) + i128::from(position) * i128::from(step);
    // The value lies between min and max, so it fits in i64.
    value as i64
}

/// Decodes grid point `index`, the last parameter varying fastest.
///
/// The caller keeps `index` below the grid size, so the digits above the last non-zero one are
/// zero even when that size saturated. Specs for grid search have no conditional parameters.
pub(super) fn grid_point(parameters: &[ParameterSpec], index: u64) -> Vec<(String, Value)> {
    let mut rest = index;
    let mut point = Vec::with_capacity(parameters.len());
    for parameter in parameters.iter().rev() {
        let size = domain_size(&parameter.domain).unwrap_or(1);
        let digit = rest % size;
        rest /= size;
        let value = match &parameter.domain {
            Domain::Values(values) | Domain::Weighted { values, .. } => {
                values[digit as usize].clone()
            }
            Domain::Constant(value) => value.clone(),
            Domain::Int { min, step, .. } => Value::Int(int_at(*min, *step, digit)),
            Domain::LogInt { min, .. } => Value::Int(int_at(*min, 1, digit)),
            Domain::Uniform { .. }
            | Domain::LogUniform { .. }
            | Domain::Normal { .. }
            | Domain::LogNormal { .. } => {
                unreachable!("planned_trials plans no grid trials over a continuous domain")
            }
        };
        point.push((parameter.name.clone(), value));
    }
    point.reverse();
    point
}
