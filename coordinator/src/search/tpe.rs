//! The tree-structured Parzen estimator (Bergstra et al., "Algorithms for Hyper-Parameter
//! Optimization", NeurIPS 2011), univariate, with the kernel rules of Optuna's `TPESampler`
//! (optuna 5.1.0, `samplers/_tpe/parzen_estimator.py`).
//!
//! Until `n_startup_trials` observations exist, a trial is the random-search trial of its index.
//! After that, the observations are split by objective into the best `gamma(n)` ("below") and
//! the rest ("above"). Each active parameter, in declaration order, gets one Parzen estimator
//! per group: l(x) from the below group and g(x) from the above group, each built only from the
//! observations in which the parameter was active. The trial takes, among `n_ei_candidates`
//! draws from l, the one with the largest l(x) / g(x).
//!
//! Numeric parameters are modelled in an internal space: the log for log scales, the quantile
//! of the distribution for normal and log-normal ones, and the value itself otherwise. Each
//! observation is a Gaussian kernel truncated to the domain, and ints and quantized uniform
//! floats are modelled by the mass each kernel puts on a step. Categorical parameters use one
//! smoothed distribution over the values per observation.

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use tunefleet_proto::Value;

use super::random::random_point;
use super::space::{
    build_point, float_value, log_int_bounds, normal_cdf, normal_quantile, round_log_int,
    same_point,
};
use super::{trial_stream, Observation};
use crate::spec::{Domain, Goal, ParameterSpec, SweepSpec, TpeSpec};

/// Optuna's default: no more than this many observations count as good.
const MAX_DEFAULT_BELOW: usize = 25;
/// Optuna's default weights: the newest this many observations weigh 1, older ones less.
const FULL_WEIGHT_OBSERVATIONS: usize = 25;
/// Optuna's "magic clip": no kernel is narrower than the range over min(100, 1 + kernels).
const MAX_KERNELS_FOR_CLIP: f64 = 100.0;

/// Returns trial `index` of a TPE sweep, conditioned on `observations`.
pub(super) fn tpe_point(
    spec: &SweepSpec,
    index: u32,
    observations: &[Observation],
) -> Vec<(String, Value)> {
    let options = &spec.search.tpe;
    if observations.len() < options.n_startup_trials as usize || observations.is_empty() {
        return random_point(&spec.parameters, spec.search.seed, index);
    }
    let (below, above) = split(observations, spec.objective.goal, options);
    let mut rng = trial_stream(spec.search.seed, index);
    build_point(&spec.parameters, |_, parameter, _| {
        sample_parameter(parameter, &below, &above, options, &mut rng)
    })
}

/// Splits the observations into the best `gamma(n)` and the rest, each in index order so that
/// the weights favour recent trials as in Optuna.
fn split<'a>(
    observations: &'a [Observation],
    goal: Goal,
    options: &TpeSpec,
) -> (Vec<&'a Observation>, Vec<&'a Observation>) {
    let n = observations.len();
    let num_below = match options.gamma {
        Some(gamma) => (gamma * n as f64).ceil() as usize,
        None => (n.div_ceil(10)).min(MAX_DEFAULT_BELOW),
    };
    let num_below = num_below.clamp(1, n);
    let mut ranked: Vec<&Observation> = observations.iter().collect();
    ranked.sort_by(|a, b| {
        let order = a.value.total_cmp(&b.value);
        let order = if goal == Goal::Maximize {
            order.reverse()
        } else {
            order
        };
        order.then(a.index.cmp(&b.index))
    });
    let mut above = ranked.split_off(num_below);
    let mut below = ranked;
    below.sort_by_key(|o| o.index);
    above.sort_by_key(|o| o.index);
    (below, above)
}

/// Samples one parameter: the candidate from l with the largest l(x) / g(x).
fn sample_parameter(
    parameter: &ParameterSpec,
    below: &[&Observation],
    above: &[&Observation],
    options: &TpeSpec,
    rng: &mut ChaCha8Rng,
) -> Value {
    if let Domain::Constant(value) = &parameter.domain {
        return value.clone();
    }
    let model = Model::of(&parameter.domain);
    let l = model.estimator(&observed(parameter, &model, below), options.prior_weight);
    let g = model.estimator(&observed(parameter, &model, above), options.prior_weight);
    let mut best = (f64::NEG_INFINITY, None);
    for _ in 0..options.n_ei_candidates {
        let x = l.sample(rng);
        let score = l.log_pdf(x) - g.log_pdf(x);
        // NaN (both densities zero) never wins, and on a tie the first candidate stays.
        if best.1.is_none() || score > best.0 {
            best = (score, Some(x));
        }
    }
    let x = best.1.expect("n_ei_candidates is at least 1");
    model.value(&parameter.domain, x)
}

/// The internal coordinates of the observations in which the parameter is present, in index
/// order. A value the domain cannot produce (from an edited spec) is skipped.
fn observed(parameter: &ParameterSpec, model: &Model, group: &[&Observation]) -> Vec<f64> {
    group
        .iter()
        .filter_map(|observation| {
            let (_, value) = observation
                .params
                .iter()
                .find(|(name, _)| *name == parameter.name)?;
            model.coordinate(&parameter.domain, value)
        })
        .collect()
}

/// How a parameter is modelled.
enum Model {
    /// Values by position, with the prior probability of each.
    Categorical { prior: Vec<f64> },
    /// An interval of the internal space, with a step for discrete domains.
    Numeric {
        low: f64,
        high: f64,
        step: Option<f64>,
    },
}

impl Model {
    fn of(domain: &Domain) -> Model {
        let numeric = |low, high, step| Model::Numeric { low, high, step };
        match *domain {
            Domain::Values(ref values) => Model::Categorical {
                prior: vec![1.0 / values.len() as f64; values.len()],
            },
            Domain::Weighted { ref weights, .. } => Model::Categorical {
                prior: weights.clone(),
            },
            Domain::Constant(_) => Model::Categorical { prior: vec![1.0] },
            Domain::Uniform { min, max, q: None } => numeric(min, max, None),
            Domain::Uniform {
                min,
                max,
                q: Some(q),
            } => {
                let first = super::quantize(min, q, min, max).unwrap_or(min);
                let last = super::quantize(max, q, min, max).unwrap_or(max);
                numeric(first, last, Some(q))
            }
            Domain::LogUniform { min, max, .. } => numeric(min.ln(), max.ln(), None),
            Domain::Normal {
                mu,
                sigma,
                min,
                max,
                ..
            } => numeric(
                normal_cdf((min - mu) / sigma),
                normal_cdf((max - mu) / sigma),
                None,
            ),
            Domain::LogNormal {
                mu,
                sigma,
                min,
                max,
                ..
            } => numeric(
                normal_cdf((min.max(0.0).ln() - mu) / sigma),
                normal_cdf((max.ln() - mu) / sigma),
                None,
            ),
            Domain::Int { min, max, step } => numeric(min as f64, max as f64, Some(step as f64)),
            Domain::LogInt { min, max } => {
                let (low, high) = log_int_bounds(min, max);
                numeric(low, high, None)
            }
        }
    }

    /// Returns the internal coordinate of a value: its position for listed values, else the
    /// transformed number.
    fn coordinate(&self, domain: &Domain, value: &Value) -> Option<f64> {
        if let Domain::Values(values) | Domain::Weighted { values, .. } = domain {
            let position = values.iter().position(|v| same_point(v, value))?;
            return Some(position as f64);
        }
        let x = value.as_f64().filter(|x| x.is_finite())?;
        let coordinate = match *domain {
            Domain::LogUniform { .. } | Domain::LogInt { .. } if x > 0.0 => x.ln(),
            Domain::Normal { mu, sigma, .. } => normal_cdf((x - mu) / sigma),
            Domain::LogNormal { mu, sigma, .. } if x > 0.0 => normal_cdf((x.ln() - mu) / sigma),
            Domain::Uniform { .. } | Domain::Int { .. } => x,
            _ => return None,
        };
        Some(coordinate)
    }

    /// Turns an internal coordinate back into a value of the domain.
    fn value(&self, domain: &Domain, x: f64) -> Value {
        match *domain {
            Domain::Values(ref values) | Domain::Weighted { ref values, .. } => {
                values[x as usize].clone()
            }
            Domain::Constant(ref value) => value.clone(),
            Domain::Uniform { min, max, q } => float_value(x, q, min, max),
            Domain::LogUniform { min, max, q } => float_value(x.exp(), q, min, max),
            Domain::Normal {
                mu,
                sigma,
                min,
                max,
                q,
            } => float_value(mu + sigma * normal_quantile(open_unit(x)), q, min, max),
            Domain::LogNormal {
                mu,
                sigma,
                min,
                max,
                q,
            } => {
                let log_x = mu + sigma * normal_quantile(open_unit(x));
                float_value(log_x.exp(), q, min, max)
            }
            Domain::Int { min, max, .. } => Value::Int((x.round() as i64).clamp(min, max)),
            Domain::LogInt { min, max } => Value::Int(round_log_int(x, min, max)),
        }
    }

    /// Builds the Parzen estimator of observations given in index order.
    fn estimator(&self, observations: &[f64], prior_weight: f64) -> Estimator {
        let weights = mixture_weights(observations.len(), prior_weight);
        match self {
            Model::Categorical { prior } => Estimator::Categorical(categorical_kernels(
                observations,
                prior,
                prior_weight,
                weights,
            )),
            Model::Numeric { low, high, step } => {
                Estimator::Numeric(numeric_kernels(observations, *low, *high, *step, weights))
            }
        }
    }
}

fn open_unit(u: f64) -> f64 {
    u.clamp(f64::MIN_POSITIVE, 1.0 - f64::EPSILON / 2.0)
}

/// Optuna's default weights with the prior's weight appended, normalized: observations older
/// than the newest 25 ramp linearly from 1/n up to 1.
fn mixture_weights(n: usize, prior_weight: f64) -> Vec<f64> {
    if n == 0 {
        return vec![1.0];
    }
    let mut weights = Vec::with_capacity(n + 1);
    if n < FULL_WEIGHT_OBSERVATIONS {
        weights.resize(n, 1.0);
    } else {
        let ramp = n - FULL_WEIGHT_OBSERVATIONS;
        let start = 1.0 / n as f64;
        for i in 0..ramp {
            // numpy.linspace(1 / n, 1, ramp)
            let fraction = if ramp > 1 {
                i as f64 / (ramp - 1) as f64
            } else {
                0.0
            };
            weights.push(start + fraction * (1.0 - start));
        }
        weights.resize(n, 1.0);
    }
    weights.push(prior_weight);
    let sum: f64 = weights.iter().sum();
    weights.iter().map(|w| w / sum).collect()
}

/// A weighted mixture of kernels over one parameter's internal space.
enum Estimator {
    Categorical(CategoricalKernels),
    Numeric(NumericKernels),
}

impl Estimator {
    fn sample(&self, rng: &mut ChaCha8Rng) -> f64 {
        match self {
            Estimator::Categorical(kernels) => kernels.sample(rng),
            Estimator::Numeric(kernels) => kernels.sample(rng),
        }
    }

    fn log_pdf(&self, x: f64) -> f64 {
        match self {
            Estimator::Categorical(kernels) => kernels.log_pdf(x),
            Estimator::Numeric(kernels) => kernels.log_pdf(x),
        }
    }
}

/// One smoothed distribution over the values per observation, plus the prior.
struct CategoricalKernels {
    weights: Vec<f64>,
    /// Row k is kernel k's probability of each value.
    rows: Vec<Vec<f64>>,
}

/// Builds Optuna's categorical kernels: each observation puts 1 on its value plus
/// `prior_weight / kernels` spread by the prior over every value, and the last kernel is the
/// prior itself.
fn categorical_kernels(
    observations: &[f64],
    prior: &[f64],
    prior_weight: f64,
    weights: Vec<f64>,
) -> CategoricalKernels {
    let num_kernels = observations.len() + 1;
    let smoothing = prior_weight / num_kernels as f64;
    let mut rows = Vec::with_capacity(num_kernels);
    for &observed in observations {
        let mut row: Vec<f64> = prior
            .iter()
            .map(|p| smoothing * p * prior.len() as f64)
            .collect();
        row[observed as usize] += 1.0;
        let sum: f64 = row.iter().sum();
        rows.push(row.iter().map(|p| p / sum).collect());
    }
    rows.push(prior.to_vec());
    CategoricalKernels { weights, rows }
}

impl CategoricalKernels {
    fn sample(&self, rng: &mut ChaCha8Rng) -> f64 {
        let kernel = pick(&self.weights, rng.random());
        pick(&self.rows[kernel], rng.random()) as f64
    }

    fn log_pdf(&self, x: f64) -> f64 {
        let position = x as usize;
        let p: f64 = self
            .weights
            .iter()
            .zip(&self.rows)
            .map(|(w, row)| w * row[position])
            .sum();
        p.ln()
    }
}

/// Truncated Gaussian kernels on [low, high], one per observation plus a wide prior.
struct NumericKernels {
    weights: Vec<f64>,
    mus: Vec<f64>,
    sigmas: Vec<f64>,
    /// The interval of the internal space, widened by half a step on each side when discrete.
    low: f64,
    high: f64,
    step: Option<f64>,
    /// The grid origin of a discrete domain.
    origin: f64,
    /// The last grid point of a discrete domain.
    last: f64,
}

/// Builds Optuna's univariate kernels: each kernel's bandwidth is the larger distance to its
/// neighbours among the sorted centres and the interval's ends, the first and last using
/// their inner neighbour only, clipped to [range / min(100, 1 + kernels), range]. The prior
/// sits at the centre with the whole range as bandwidth.
fn numeric_kernels(
    observations: &[f64],
    low: f64,
    high: f64,
    step: Option<f64>,
    weights: Vec<f64>,
) -> NumericKernels {
    let half_step = step.unwrap_or(0.0) / 2.0;
    let (lo, hi) = (low - half_step, high + half_step);
    let range = hi - lo;
    let prior_mu = 0.5 * (low + high);

    let mut centres: Vec<f64> = observations.to_vec();
    centres.push(prior_mu);
    let mut order: Vec<usize> = (0..centres.len()).collect();
    order.sort_by(|&a, &b| centres[a].total_cmp(&centres[b]));
    let mut sorted = Vec::with_capacity(centres.len() + 2);
    sorted.push(lo);
    sorted.extend(order.iter().map(|&i| centres[i]));
    sorted.push(hi);
    let m = centres.len();
    let mut sorted_sigmas: Vec<f64> = (1..=m)
        .map(|i| (sorted[i] - sorted[i - 1]).max(sorted[i + 1] - sorted[i]))
        .collect();
    if sorted.len() >= 4 {
        sorted_sigmas[0] = sorted[2] - sorted[1];
        sorted_sigmas[m - 1] = sorted[m] - sorted[m - 1];
    }
    let mut sigmas = vec![0.0; m];
    for (rank, &i) in order.iter().enumerate() {
        sigmas[i] = sorted_sigmas[rank];
    }
    let num_kernels = observations.len() + 1;
    let min_sigma = range / MAX_KERNELS_FOR_CLIP.min(1.0 + num_kernels as f64);
    sigmas.truncate(observations.len());
    for sigma in &mut sigmas {
        *sigma = sigma.clamp(min_sigma, range);
    }
    sigmas.push(range);

    NumericKernels {
        weights,
        mus: centres,
        sigmas,
        low: lo,
        high: hi,
        step,
        origin: low,
        last: high,
    }
}

impl NumericKernels {
    fn sample(&self, rng: &mut ChaCha8Rng) -> f64 {
        let kernel = pick(&self.weights, rng.random());
        let (mu, sigma) = (self.mus[kernel], self.sigmas[kernel]);
        let a = (self.low - mu) / sigma;
        let b = (self.high - mu) / sigma;
        let x = mu + sigma * truncated_normal_quantile(a, b, rng.random());
        match self.step {
            None => x.clamp(self.low, self.high),
            Some(step) => {
                let k = ((x - self.origin) / step).round();
                (self.origin + k * step).clamp(self.origin, self.last)
            }
        }
    }

    fn log_pdf(&self, x: f64) -> f64 {
        let terms: Vec<f64> = (0..self.mus.len())
            .map(|k| self.weights[k].ln() + self.kernel_log_pdf(k, x))
            .collect();
        log_sum_exp(&terms)
    }

    /// Kernel k's log density at x, or for a discrete domain the log of its mass on x's step.
    fn kernel_log_pdf(&self, k: usize, x: f64) -> f64 {
        let (mu, sigma) = (self.mus[k], self.sigmas[k]);
        let a = (self.low - mu) / sigma;
        let b = (self.high - mu) / sigma;
        let log_total = log_normal_mass(a, b);
        match self.step {
            None => {
                let z = (x - mu) / sigma;
                -0.5 * z * z - 0.5 * (2.0 * std::f64::consts::PI).ln() - sigma.ln() - log_total
            }
            Some(step) => {
                let lower = ((x - step / 2.0).max(self.low) - mu) / sigma;
                let upper = ((x + step / 2.0).min(self.high) - mu) / sigma;
                log_normal_mass(lower, upper) - log_total
            }
        }
    }
}

/// Returns the index whose cumulative weight first exceeds u.
fn pick(weights: &[f64], u: f64) -> usize {
    let mut cumulative = 0.0;
    for (i, weight) in weights.iter().enumerate() {
        cumulative += weight;
        if u < cumulative {
            return i;
        }
    }
    weights.len() - 1
}

/// Returns ln(Phi(b) - Phi(a)) for a <= b, computed on the side of the tail for precision.
fn log_normal_mass(a: f64, b: f64) -> f64 {
    let upper_tail = |z: f64| 0.5 * libm::erfc(z / std::f64::consts::SQRT_2);
    let mass = if a >= 0.0 {
        upper_tail(a) - upper_tail(b)
    } else if b <= 0.0 {
        upper_tail(-b) - upper_tail(-a)
    } else {
        1.0 - upper_tail(b) - upper_tail(-a)
    };
    mass.max(0.0).ln()
}

/// Returns the quantile u in [0, 1) of a standard normal truncated to [a, b], by inverting the
/// distribution function on the side of the tail for precision.
fn truncated_normal_quantile(a: f64, b: f64, u: f64) -> f64 {
    if a > 0.0 {
        // Mirror into the lower tail, where the distribution function is precise.
        return -truncated_normal_quantile(-b, -a, 1.0 - u);
    }
    let (low, high) = (normal_cdf(a), normal_cdf(b));
    let p = low + u * (high - low);
    if p <= 0.0 || high <= low {
        return a;
    }
    normal_quantile(p.min(1.0 - f64::EPSILON / 2.0)).clamp(a, b)
}

fn log_sum_exp(terms: &[f64]) -> f64 {
    let max = terms.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if max == f64::NEG_INFINITY {
        return max;
    }
    max + terms.iter().map(|t| (t - max).exp()).sum::<f64>().ln()
}
