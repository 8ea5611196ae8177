//! The search space seen as a unit cube: each parameter maps a coordinate u in [0, 1) onto its
//! domain through the inverse of its distribution function, and conditions decide which
//! parameters a point has.

use tunefleet_proto::Value;

use super::grid::{int_at, int_count};
use crate::spec::{Domain, ParameterSpec};

/// Builds a point from the parameters in declaration order, leaving out inactive ones.
///
/// `pick` gets the parameter's position, the parameter and the point built so far.
pub(super) fn build_point(
    parameters: &[ParameterSpec],
    mut pick: impl FnMut(usize, &ParameterSpec, &[(String, Value)]) -> Value,
) -> Vec<(String, Value)> {
    let mut point = Vec::with_capacity(parameters.len());
    for (position, parameter) in parameters.iter().enumerate() {
        if is_active(parameter, &point) {
            let value = pick(position, parameter, &point);
            point.push((parameter.name.clone(), value));
        }
    }
    point
}

/// Reports whether every condition of `parameter` is met by the point built so far. A parent
/// that is absent from the point is inactive, so its children are too.
pub(super) fn is_active(parameter: &ParameterSpec, point: &[(String, Value)]) -> bool {
    parameter.when.iter().all(|condition| {
        point
            .iter()
            .find(|(name, _)| *name == condition.parent)
            .is_some_and(|(_, value)| condition.values.contains(value))
    })
}

/// Maps a coordinate u in [0, 1) onto the domain through the inverse of its distribution
/// function: listed values by equal or weighted bins, ints by rounding down to a step.
pub(super) fn value_at(domain: &Domain, u: f64) -> Value {
    let u = u.clamp(0.0, 1.0);
    match *domain {
        Domain::Values(ref values) => values[bin(u, values.len())].clone(),
        Domain::Weighted {
            ref values,
            ref weights,
        } => values[weighted_bin(u, weights)].clone(),
        Domain::Constant(ref value) => value.clone(),
        Domain::Uniform { min, max, q } => float_value(min + u * (max - min), q, min, max),
        Domain::LogUniform { min, max, q } => {
            let x = (min.ln() + u * (max.ln() - min.ln())).exp();
            float_value(x, q, min, max)
        }
        Domain::Normal {
            mu,
            sigma,
            min,
            max,
            q,
        } => float_value(mu + sigma * normal_quantile(open_unit(u)), q, min, max),
        Domain::LogNormal {
            mu,
            sigma,
            min,
            max,
            q,
        } => {
            let x = (mu + sigma * normal_quantile(open_unit(u))).exp();
            float_value(x, q, min, max)
        }
        Domain::Int { min, max, step } => {
            let count = int_count(min, max, step);
            let position = ((u * count as f64) as u64).min(count - 1);
            Value::Int(int_at(min, step, position))
        }
        Domain::LogInt { min, max } => Value::Int(log_int_at(min, max, u)),
    }
}

/// Maps u onto [min - 0.5, max + 0.5] on a log scale and rounds, as Optuna does for a
/// log-scaled int, so every int in the range gets a bin.
pub(super) fn log_int_at(min: i64, max: i64, u: f64) -> i64 {
    let (low, high) = log_int_bounds(min, max);
    round_log_int(low + u * (high - low), min, max)
}

/// The log-scaled interval of a log int domain.
pub(super) fn log_int_bounds(min: i64, max: i64) -> (f64, f64) {
    ((min as f64 - 0.5).ln(), (max as f64 + 0.5).ln())
}

/// Turns a log-scale coordinate of a log int domain back into an int of the domain.
pub(super) fn round_log_int(log_x: f64, min: i64, max: i64) -> i64 {
    let x = log_x.exp().round();
    // The float lies near [min, max], so the cast only clamps an out-of-range rounding.
    (x as i64).clamp(min, max)
}

/// Clips x into [min, max] and rounds it to the nearest multiple of q inside, if q is set.
pub(super) fn float_value(x: f64, q: Option<f64>, min: f64, max: f64) -> Value {
    let clipped = x.clamp(min, max);
    let quantized = q.and_then(|q| quantize(clipped, q, min, max));
    Value::Float(quantized.unwrap_or(clipped))
}

/// Returns the multiple of `q` nearest to `x` within [min, max], or `None` when no multiple
/// of `q` lies there.
///
/// This is the quantization of hyperopt and W&B (`round(x / q) * q`), kept inside the bounds.
pub fn quantize(x: f64, q: f64, min: f64, max: f64) -> Option<f64> {
    let k = (x / q).round();
    [k, k + 1.0, k - 1.0]
        .into_iter()
        .map(|k| k * q)
        .filter(|v| v.is_finite() && *v >= min && *v <= max)
        .min_by(|a, b| (a - x).abs().total_cmp(&(b - x).abs()))
}

/// Returns the bin of u among `n` equal bins.
fn bin(u: f64, n: usize) -> usize {
    ((u * n as f64) as usize).min(n - 1)
}

/// Returns the bin of u among bins whose widths are `weights`, which sum to 1.
pub(super) fn weighted_bin(u: f64, weights: &[f64]) -> usize {
    let mut cumulative = 0.0;
    for (i, weight) in weights.iter().enumerate() {
        cumulative += weight;
        if u < cumulative {
            return i;
        }
    }
    weights.len() - 1
}

/// Keeps u away from 0 and 1, where the normal quantile is infinite.
fn open_unit(u: f64) -> f64 {
    u.clamp(f64::MIN_POSITIVE, 1.0 - f64::EPSILON / 2.0)
}

/// The standard normal distribution function.
pub(super) fn normal_cdf(z: f64) -> f64 {
    0.5 * libm::erfc(-z / std::f64::consts::SQRT_2)
}

/// The standard normal quantile function, for p in (0, 1).
///
/// Acklam's rational approximation (relative error below 1.2e-9), refined by one step of
/// Halley's method on `normal_cdf`, which brings it close to double precision.
pub(super) fn normal_quantile(p: f64) -> f64 {
    const A: [f64; 6] = [
        -3.969_683_028_665_376e1,
        2.209_460_984_245_205e2,
        -2.759_285_104_469_687e2,
        1.383_577_518_672_69e2,
        -3.066_479_806_614_716e1,
        2.506_628_277_459_239,
    ];
    const B: [f64; 5] = [
        -5.447_609_879_822_406e1,
        1.615_858_368_580_409e2,
        -1.556_989_798_598_866e2,
        6.680_131_188_771_972e1,
        -1.328_068_155_288_572e1,
    ];
    const C: [f64; 6] = [
        -7.784_894_002_430_293e-3,
        -3.223_964_580_411_365e-1,
        -2.400_758_277_161_838,
        -2.549_732_539_343_734,
        4.374_664_141_464_968,
        2.938_163_982_698_783,
    ];
    const D: [f64; 4] = [
        7.784_695_709_041_462e-3,
        3.224_671_290_700_398e-1,
        2.445_134_137_142_996,
        3.754_408_661_907_416,
    ];
    const P_LOW: f64 = 0.024_25;
    let tail = |q: f64| {
        let r = (-2.0 * q.ln()).sqrt();
        (((((C[0] * r + C[1]) * r + C[2]) * r + C[3]) * r + C[4]) * r + C[5])
            / ((((D[0] * r + D[1]) * r + D[2]) * r + D[3]) * r + 1.0)
    };
    let x = if p < P_LOW {
        tail(p)
    } else if p > 1.0 - P_LOW {
        -tail(1.0 - p)
    } else {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    };
    // One Halley step: e is the error of the distribution function at x.
    let e = normal_cdf(x) - p;
    let u = e * (2.0 * std::f64::consts::PI).sqrt() * (x * x / 2.0).exp();
    x - u / (1.0 + x * u / 2.0)
}

/// Compares two values as the trainer reads them: ints and floats by number, else by type and
/// content.
pub(crate) fn same_point(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Int(x), Value::Int(y)) => x == y,
        (Value::Int(_) | Value::Float(_), Value::Int(_) | Value::Float(_)) => {
            a.as_f64() == b.as_f64()
        }
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantile_inverts_cdf() {
        for p in [1e-12, 1e-6, 0.01, 0.2, 0.5, 0.77, 0.99, 1.0 - 1e-9] {
            let z = normal_quantile(p);
            let back = normal_cdf(z);
            assert!(
                (back - p).abs() <= 1e-12 * p.max(1e-3),
                "p {p}: z {z}, cdf {back}"
            );
        }
    }

    #[test]
    fn quantile_known_values() {
        assert!(normal_quantile(0.5).abs() < 1e-15);
        assert!((normal_quantile(0.975) - 1.959_963_984_540_054).abs() < 1e-12);
    }

    #[test]
    fn quantize_stays_inside_bounds() {
        assert_eq!(quantize(0.26, 0.1, 0.05, 0.95), Some(0.30000000000000004));
        assert_eq!(quantize(0.0, 0.5, 0.2, 1.0), Some(0.5));
        assert_eq!(quantize(1.0, 0.5, 0.2, 0.9), Some(0.5));
        assert_eq!(quantize(0.3, 0.5, 0.2, 0.4), None);
    }

    #[test]
    fn weighted_bin_follows_weights() {
        let weights = [0.5, 0.25, 0.25];
        assert_eq!(weighted_bin(0.0, &weights), 0);
        assert_eq!(weighted_bin(0.49, &weights), 0);
        assert_eq!(weighted_bin(0.5, &weights), 1);
        assert_eq!(weighted_bin(0.99, &weights), 2);
    }

    #[test]
    fn log_int_reaches_both_ends() {
        assert_eq!(log_int_at(1, 100, 0.0), 1);
        assert_eq!(log_int_at(1, 100, 0.999_999), 100);
    }
}
