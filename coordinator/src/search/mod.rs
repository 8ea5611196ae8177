//! Trial generation: grid, random, Sobol and TPE search.
//!
//! Grid, random and Sobol trials are pure functions of (spec, trial index), so their whole
//! state is the number of trials created so far. A TPE trial also depends on the observations
//! of the sweep when it is created: the parameters and objective values of the trials that
//! succeeded by then. Those are stored trials, so a restarted coordinator rebuilds them and goes
//! on with the same search.
//!
//! Every method draws trial `index` from its own ChaCha8 stream: the key comes from
//! `search.seed` and the stream number is the trial index. A conditional parameter whose
//! condition fails is left out of the trial.

mod grid;
mod random;
mod sobol;
mod space;
mod tpe;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tunefleet_proto::Value;

use crate::spec::{Method, SweepSpec};

pub(crate) use self::grid::grid_size;
pub use self::space::quantize;
pub(crate) use self::space::same_point;

/// A finished trial as TPE uses it: its parameters and its objective value.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    /// The trial's index in the sweep; TPE weighs recent observations more.
    pub index: u32,
    pub params: Vec<(String, Value)>,
    /// The objective value, in the objective's own direction: the final value of a succeeded
    /// trial, or the last reported value of a pruned one.
    pub value: f64,
    /// The last epoch a pruned trial reported, or `None` for a trial that ran to the end.
    pub pruned_at_epoch: Option<u32>,
}

/// Returns how many trials the sweep will create: `max_trials`, or the grid's size if smaller.
///
/// A space with an empty domain, or a grid over a continuous distribution, has no points and
/// plans no trials. `SweepSpec::parse` rejects both, so only a spec built by hand can have them.
pub fn planned_trials(spec: &SweepSpec) -> u32 {
    if spec
        .parameters
        .iter()
        .any(|p| grid::domain_size(&p.domain) == Some(0))
    {
        return 0;
    }
    match spec.search.method {
        Method::Random | Method::Sobol | Method::Tpe => spec.search.max_trials,
        Method::Grid => {
            let grid_size = grid_size(&spec.parameters).unwrap_or(0);
            // The minimum is at most max_trials, so it fits in u32.
            grid_size.min(spec.search.max_trials.into()) as u32
        }
    }
}

/// Returns the parameters of trial `index` in declaration order, or `None` past the plan.
///
/// Only TPE reads `observations`, the sweep's succeeded trials; the other methods ignore them.
pub fn trial_params(
    spec: &SweepSpec,
    index: u32,
    observations: &[Observation],
) -> Option<Vec<(String, Value)>> {
    if index >= planned_trials(spec) {
        return None;
    }
    let params = match spec.search.method {
        Method::Grid => grid::grid_point(&spec.parameters, index.into()),
        Method::Random => random::random_point(&spec.parameters, spec.search.seed, index),
        Method::Sobol => sobol::sobol_point(&spec.parameters, spec.search.seed, index),
        Method::Tpe => tpe::tpe_point(spec, index, observations),
    };
    Some(params)
}

/// Returns the training seed of trial `index`, derived from the search seed.
///
/// The seed is output number `index + 1` of a SplitMix64 generator started at `search.seed`.
/// Each step of that generator is a bijection on u64, so two trials of one sweep never share a
/// training seed.
pub fn trial_seed(spec: &SweepSpec, index: u32) -> u64 {
    splitmix64(spec.search.seed, u64::from(index) + 1)
}

/// Returns output number `steps` of a SplitMix64 generator started at `seed`.
fn splitmix64(seed: u64, steps: u64) -> u64 {
    // SplitMix64's increment (2^64 divided by the golden ratio, made odd) and its two mixing
    // multipliers.
    const GOLDEN_GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut z = seed.wrapping_add(steps.wrapping_mul(GOLDEN_GAMMA));
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Returns the random stream of trial `index`.
fn trial_stream(seed: u64, index: u32) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(index.into());
    rng
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::path::Path;

    use super::*;
    use crate::spec::{Domain, ParameterSpec};

    fn parse(rest: &str) -> SweepSpec {
        let text = format!(
            "name = \"t\"\n[objective]\nmetric = \"val_accuracy\"\n\
             [task]\nmodel = \"mlp\"\ndataset = \"d.npz\"\n{rest}"
        );
        SweepSpec::parse(&text, Path::new(".")).unwrap_or_else(|err| panic!("{err}\n{text}"))
    }

    fn random_spec(seed: u64) -> SweepSpec {
        parse(&format!(
            "[search]\nmethod = \"random\"\nmax_trials = 50\nseed = {seed}\n[parameters]\n\
             optimizer = [\"sgd\", \"adam\", \"adamw\"]\n\
             lr = {{ distribution = \"log_uniform\", min = 1e-4, max = 1e-1 }}\n\
             dropout = {{ distribution = \"uniform\", min = 0.0, max = 0.3 }}\n\
             batch_size = {{ distribution = \"int\", min = 16, max = 128, step = 16 }}\n\
             hidden_size = [64, 128, 256]"
        ))
    }

    fn all_params(spec: &SweepSpec) -> Vec<Vec<(String, Value)>> {
        (0..planned_trials(spec))
            .map(|index| trial_params(spec, index, &[]).unwrap())
            .collect()
    }

    fn point(pairs: &[(&str, Value)]) -> Vec<(String, Value)> {
        pairs
            .iter()
            .map(|(name, value)| (name.to_string(), value.clone()))
            .collect()
    }

    fn text(s: &str) -> Value {
        Value::String(s.to_string())
    }

    fn value_of<'a>(params: &'a [(String, Value)], name: &str) -> &'a Value {
        &params.iter().find(|(n, _)| n == name).unwrap().1
    }

    #[test]
    fn grid_runs_last_parameter_fastest() {
        let spec = parse(
            "[search]\nmethod = \"grid\"\n[parameters]\noptimizer = [\"sgd\", \"adam\"]\n\
             batch_size = { distribution = \"int\", min = 16, max = 48, step = 16 }",
        );
        let expected: Vec<_> = [
            ("sgd", 16),
            ("sgd", 32),
            ("sgd", 48),
            ("adam", 16),
            ("adam", 32),
            ("adam", 48),
        ]
        .iter()
        .map(|&(optimizer, batch_size)| {
            point(&[
                ("optimizer", text(optimizer)),
                ("batch_size", Value::Int(batch_size)),
            ])
        })
        .collect();
        assert_eq!(planned_trials(&spec), 6);
        assert_eq!(all_params(&spec), expected);
        assert_eq!(trial_params(&spec, 6, &[]), None);
    }

    #[test]
    fn grid_int_stops_before_off_step_max() {
        let spec = parse(
            "[search]\nmethod = \"grid\"\n[parameters]\n\
             hidden_layers = { distribution = \"int\", min = 1, max = 6, step = 2 }",
        );
        let layers: Vec<Value> = all_params(&spec)
            .into_iter()
            .map(|params| params[0].1.clone())
            .collect();
        assert_eq!(layers, [Value::Int(1), Value::Int(3), Value::Int(5)]);
    }

    #[test]
    fn grid_stops_at_max_trials() {
        let spec = parse(
            "[search]\nmethod = \"grid\"\nmax_trials = 3\n[parameters]\n\
             lr = [0.01, 0.03]\nhidden_size = [32, 64]",
        );
        assert_eq!(planned_trials(&spec), 3);
        assert_eq!(trial_params(&spec, 3, &[]), None);
    }

    #[test]
    fn grid_smaller_than_max_trials() {
        let spec =
            parse("[search]\nmethod = \"grid\"\nmax_trials = 100\n[parameters]\nlr = [0.01, 0.03]");
        assert_eq!(planned_trials(&spec), 2);
    }

    #[test]
    fn grid_without_parameters_is_one_empty_point() {
        let spec = parse("[search]\nmethod = \"grid\"");
        assert_eq!(planned_trials(&spec), 1);
        assert_eq!(trial_params(&spec, 0, &[]), Some(Vec::new()));
        assert_eq!(trial_params(&spec, 1, &[]), None);
    }

    #[test]
    fn grid_decodes_large_index_lazily() {
        // Ten parameters of ten values each: 10^10 points, never built. Search does not check
        // names against the schema, so the hand-built space can use any.
        let mut spec = parse("[search]\nmethod = \"grid\"");
        spec.parameters = (0..10)
            .map(|p| ParameterSpec {
                name: format!("p{p}"),
                domain: Domain::Values((0..10).map(Value::Int).collect()),
                when: Vec::new(),
            })
            .collect();
        spec.search.max_trials = 10_000_000;
        assert_eq!(grid_size(&spec.parameters), Some(10_000_000_000));
        assert_eq!(planned_trials(&spec), 10_000_000);

        let params = trial_params(&spec, 9_876_543, &[]).unwrap();
        let digits: Vec<i64> = params.iter().map(|(_, v)| v.as_i64().unwrap()).collect();
        assert_eq!(digits, [0, 0, 0, 9, 8, 7, 6, 5, 4, 3]);
        assert_eq!(params[3].0, "p3");
    }

    #[test]
    fn grid_size_saturates() {
        let parameters: Vec<ParameterSpec> = (0..5)
            .map(|p| ParameterSpec {
                name: format!("p{p}"),
                domain: Domain::Int {
                    min: i64::MIN,
                    max: i64::MAX,
                    step: 1,
                },
                when: Vec::new(),
            })
            .collect();
        assert_eq!(grid_size(&parameters), Some(u64::MAX));
    }

    #[test]
    fn grid_over_continuous_plans_nothing() {
        let mut spec = parse("[search]\nmethod = \"grid\"");
        spec.parameters = vec![ParameterSpec {
            name: "lr".to_string(),
            domain: Domain::Uniform {
                min: 0.1,
                max: 0.2,
                q: None,
            },
            when: Vec::new(),
        }];
        assert_eq!(planned_trials(&spec), 0);
        assert_eq!(trial_params(&spec, 0, &[]), None);
    }

    #[test]
    fn random_plans_max_trials() {
        let spec = random_spec(7);
        assert_eq!(planned_trials(&spec), 50);
        assert_eq!(trial_params(&spec, 50, &[]), None);
    }

    #[test]
    fn random_repeats_for_same_seed() {
        assert_eq!(all_params(&random_spec(7)), all_params(&random_spec(7)));
    }

    #[test]
    fn random_differs_across_seeds() {
        assert_ne!(all_params(&random_spec(7)), all_params(&random_spec(8)));
    }

    #[test]
    fn random_trial_ignores_generation_order() {
        let spec = random_spec(7);
        let first = trial_params(&spec, 7, &[]);
        for index in 0..7 {
            trial_params(&spec, index, &[]);
        }
        assert_eq!(trial_params(&spec, 7, &[]), first);
    }

    #[test]
    fn random_keeps_declaration_order() {
        let params = trial_params(&random_spec(7), 0, &[]).unwrap();
        let names: Vec<&str> = params.iter().map(|(name, _)| name.as_str()).collect();
        assert_eq!(
            names,
            ["optimizer", "lr", "dropout", "batch_size", "hidden_size"]
        );
    }

    #[test]
    fn random_trials_differ() {
        let trials = all_params(&random_spec(7));
        let distinct_lrs: HashSet<u64> = trials
            .iter()
            .map(|params| value_of(params, "lr").as_f64().unwrap().to_bits())
            .collect();
        assert_eq!(distinct_lrs.len(), trials.len());
    }

    #[test]
    fn random_draws_stay_in_domain() {
        let mut spec = random_spec(3);
        spec.search.max_trials = 2_000;
        let trials = all_params(&spec);
        let optimizers = [text("sgd"), text("adam"), text("adamw")];
        let hidden_sizes = [Value::Int(64), Value::Int(128), Value::Int(256)];
        for params in &trials {
            let optimizer = value_of(params, "optimizer");
            assert!(optimizers.contains(optimizer), "optimizer {optimizer}");

            let hidden_size = value_of(params, "hidden_size");
            assert!(
                hidden_sizes.contains(hidden_size),
                "hidden_size {hidden_size}"
            );

            let Value::Float(lr) = *value_of(params, "lr") else {
                panic!("lr is not a float: {params:?}");
            };
            assert!((1e-4..=1e-1).contains(&lr), "lr {lr}");

            let Value::Float(dropout) = *value_of(params, "dropout") else {
                panic!("dropout is not a float: {params:?}");
            };
            assert!((0.0..=0.3).contains(&dropout), "dropout {dropout}");

            let Value::Int(batch_size) = *value_of(params, "batch_size") else {
                panic!("batch_size is not an int: {params:?}");
            };
            assert!((16..=128).contains(&batch_size), "batch_size {batch_size}");
            assert_eq!(batch_size % 16, 0, "batch_size {batch_size}");
        }
    }

    #[test]
    fn random_reaches_every_int_step() {
        let mut spec = random_spec(3);
        spec.search.max_trials = 500;
        let seen: HashSet<i64> = all_params(&spec)
            .iter()
            .map(|params| value_of(params, "batch_size").as_i64().unwrap())
            .collect();
        let expected: HashSet<i64> = (16..=128).step_by(16).collect();
        assert_eq!(seen, expected);
    }

    #[test]
    fn log_uniform_spreads_across_decades() {
        let mut spec = random_spec(11);
        spec.search.max_trials = 3_000;
        let mut per_decade = [0_u32; 3];
        for params in all_params(&spec) {
            let lr = value_of(&params, "lr").as_f64().unwrap();
            // Decade 0 is [1e-4, 1e-3), 1 is [1e-3, 1e-2) and 2 is [1e-2, 1e-1].
            let decade = ((lr.log10() + 4.0).floor() as usize).min(2);
            per_decade[decade] += 1;
        }
        // Each decade expects 1,000 draws, and 800 is over 7 standard deviations below that.
        for (decade, count) in per_decade.iter().enumerate() {
            assert!(
                *count > 800,
                "decade {decade} got {count} of 3000: {per_decade:?}"
            );
        }
    }

    #[test]
    fn trial_seed_is_stable_and_distinct() {
        let spec = random_spec(7);
        let seeds: HashSet<u64> = (0..10_000).map(|index| trial_seed(&spec, index)).collect();
        assert_eq!(seeds.len(), 10_000);
        assert_eq!(trial_seed(&spec, 3), trial_seed(&random_spec(7), 3));
        assert_ne!(trial_seed(&spec, 3), trial_seed(&random_spec(8), 3));
    }

    fn conditional_spec(method: &str) -> SweepSpec {
        parse(&format!(
            "[search]\nmethod = \"{method}\"\nmax_trials = 400\nseed = 5\n[parameters]\n\
             optimizer = {{ values = [\"sgd\", \"adam\", \"adamw\"], weights = [0.6, 0.2, 0.2] }}\n\
             momentum = {{ distribution = \"uniform\", min = 0.5, max = 0.99, q = 0.01, \
             when = {{ optimizer = [\"sgd\"] }} }}\n\
             weight_decay = {{ distribution = \"normal\", mu = 0.0, sigma = 0.1 }}\n\
             lr = {{ distribution = \"log_normal\", mu = -5, sigma = 2, max = 0.5 }}\n\
             hidden_size = {{ distribution = \"int\", min = 8, max = 1024, log = true }}\n\
             hidden_layers = {{ value = 3 }}"
        ))
    }

    #[test]
    fn conditional_parameter_only_when_active() {
        for method in ["random", "sobol"] {
            let spec = conditional_spec(method);
            for params in all_params(&spec) {
                let optimizer = value_of(&params, "optimizer").as_str().unwrap().to_string();
                let has_momentum = params.iter().any(|(name, _)| name == "momentum");
                assert_eq!(has_momentum, optimizer == "sgd", "{method}: {params:?}");
            }
        }
    }

    #[test]
    fn new_distributions_stay_in_domain() {
        for method in ["random", "sobol"] {
            let spec = conditional_spec(method);
            for params in all_params(&spec) {
                if let Some((_, momentum)) = params.iter().find(|(n, _)| n == "momentum") {
                    let Value::Float(m) = *momentum else {
                        panic!("momentum is not a float: {params:?}");
                    };
                    assert!((0.5..=0.99).contains(&m), "{method}: momentum {m}");
                    let hundredths = m * 100.0;
                    assert!(
                        (hundredths - hundredths.round()).abs() < 1e-6,
                        "momentum {m}"
                    );
                }
                let Value::Float(weight_decay) = *value_of(&params, "weight_decay") else {
                    panic!("weight_decay is not a float: {params:?}");
                };
                // The normal draw is clipped to the hyperparameter's range [0, 1].
                assert!((0.0..=1.0).contains(&weight_decay), "{weight_decay}");
                let Value::Float(lr) = *value_of(&params, "lr") else {
                    panic!("lr is not a float: {params:?}");
                };
                assert!(lr > 0.0, "lr {lr}");
                assert!(lr <= 0.5, "lr {lr}");
                let Value::Int(hidden_size) = *value_of(&params, "hidden_size") else {
                    panic!("hidden_size is not an int: {params:?}");
                };
                assert!(
                    (8..=1024).contains(&hidden_size),
                    "hidden_size {hidden_size}"
                );
                assert_eq!(value_of(&params, "hidden_layers"), &Value::Int(3));
            }
        }
    }

    #[test]
    fn weighted_values_follow_weights() {
        let spec = conditional_spec("sobol");
        let trials = all_params(&spec);
        let sgd = trials
            .iter()
            .filter(|params| value_of(params, "optimizer") == &text("sgd"))
            .count();
        // 400 stratified points with weight 0.6 give 240 give or take rounding.
        assert!((236..=244).contains(&sgd), "{sgd} of 400 trials use sgd");
    }

    #[test]
    fn normal_clips_at_schema_range() {
        let spec = conditional_spec("random");
        let trials = all_params(&spec);
        let at_zero = trials
            .iter()
            .filter(|params| value_of(params, "weight_decay") == &Value::Float(0.0))
            .count();
        // Half of N(0, 0.1) lies below the hyperparameter's minimum 0.
        assert!(
            (160..=240).contains(&at_zero),
            "{at_zero} of 400 clipped to 0"
        );
    }

    #[test]
    fn log_int_covers_decades_evenly() {
        let spec = conditional_spec("sobol");
        let trials = all_params(&spec);
        let below_91 = trials
            .iter()
            .filter(|params| value_of(params, "hidden_size").as_i64().unwrap() < 91)
            .count();
        // ln(90.5 / 7.5) / ln(1024.5 / 7.5) is about half of the log range.
        assert!(
            (185..=215).contains(&below_91),
            "{below_91} of 400 below 91"
        );
    }

    #[test]
    fn sobol_repeats_for_same_seed() {
        assert_eq!(
            all_params(&conditional_spec("sobol")),
            all_params(&conditional_spec("sobol"))
        );
    }
}
