//! Measures how well each search method minimises three test functions when every trial is
//! created after all earlier results are known: Branin (2-d), Hartmann-6 and a mixed space with a categorical parameter
//! and two conditional ones. It calls the search module directly, with no coordinator.
//!
//! For each function, method and seed, the run creates `--trials` trials in order, evaluates
//! each and hands the results to the next trial as observations. Each run prints one JSON line
//! on stdout with the best value after every budget of `--budgets`. `scripts/bench_search` runs
//! this and the Optuna reference (`scripts/bench_search.py`) and prints one table.
//!
//! ```text
//! cargo bench -p tunefleet-coordinator --bench search -- \
//!     [--seeds 30] [--trials 100] [--budgets 50,100] [--methods random,sobol,tpe]
//!     [--functions branin,hartmann6,mixed] [--n-ei-candidates N] [--prior-weight W]
//! ```

use std::path::Path;

use anyhow::{bail, Context, Result};
use tunefleet_coordinator::search::{self, Observation};
use tunefleet_coordinator::spec::{Condition, Domain, Goal, Method, ParameterSpec, SweepSpec};
use tunefleet_proto::Value;

/// The spec every run starts from; the bench swaps in its own method, seed and space.
const BASE_SPEC: &str = r#"
name = "search-bench"
[objective]
metric = "val_loss"
[search]
max_trials = 100
[task]
model = "mlp"
dataset = "unused.npz"
"#;

/// A test function of a trial's parameters, to be minimised.
type Objective = fn(&[(String, Value)]) -> f64;

struct Args {
    seeds: u64,
    trials: u32,
    budgets: Vec<u32>,
    methods: Vec<Method>,
    functions: Vec<String>,
    /// Overrides of `[search.tpe]`, for trying settings.
    n_ei_candidates: Option<u32>,
    prior_weight: Option<f64>,
}

fn main() -> Result<()> {
    let args = parse_args()?;
    let functions: [(&str, Vec<ParameterSpec>, Objective); 3] = [
        ("branin", branin_space(), branin),
        ("hartmann6", hartmann6_space(), hartmann6),
        ("mixed", mixed_space(), mixed),
    ];
    for (name, space, objective) in &functions {
        if !args.functions.iter().any(|f| f == name) {
            continue;
        }
        for &method in &args.methods {
            eprintln!("search bench: {name}, {}", method_name(method));
            for seed in 0..args.seeds {
                let bests = run(&args, method, seed, space, *objective)?;
                let budgets: Vec<String> = args
                    .budgets
                    .iter()
                    .zip(&bests)
                    .map(|(budget, best)| format!("\"{budget}\": {best}"))
                    .collect();
                println!(
                    "{{\"system\": \"tunefleet\", \"method\": \"{}\", \"function\": \"{name}\", \
                     \"seed\": {seed}, \"best\": {{{}}}}}",
                    method_name(method),
                    budgets.join(", ")
                );
            }
        }
    }
    Ok(())
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        seeds: 30,
        trials: 100,
        budgets: vec![50, 100],
        methods: vec![Method::Random, Method::Sobol, Method::Tpe],
        functions: vec!["branin".into(), "hartmann6".into(), "mixed".into()],
        n_ei_candidates: None,
        prior_weight: None,
    };
    let mut raw = std::env::args().skip(1);
    while let Some(flag) = raw.next() {
        // `cargo bench` passes --bench to every bench target.
        if flag == "--bench" {
            continue;
        }
        let value = raw
            .next()
            .with_context(|| format!("missing value after {flag}"))?;
        match flag.as_str() {
            "--seeds" => args.seeds = value.parse().context("invalid --seeds")?,
            "--trials" => args.trials = value.parse().context("invalid --trials")?,
            "--budgets" => args.budgets = parse_list(&value).context("invalid --budgets")?,
            "--functions" => args.functions = value.split(',').map(str::to_string).collect(),
            "--n-ei-candidates" => {
                args.n_ei_candidates = Some(value.parse().context("invalid --n-ei-candidates")?);
            }
            "--prior-weight" => {
                args.prior_weight = Some(value.parse().context("invalid --prior-weight")?);
            }
            "--methods" => {
                args.methods = value.split(',').map(parse_method).collect::<Result<_>>()?;
            }
            other => bail!(
                "unknown argument {other}: expected --seeds, --trials, --budgets, --methods, \
                 --functions, --n-ei-candidates or --prior-weight"
            ),
        }
    }
    if let Some(budget) = args.budgets.iter().find(|b| **b > args.trials || **b == 0) {
        bail!(
            "invalid budget {budget}: expected 1 to --trials ({})",
            args.trials
        );
    }
    Ok(args)
}

fn parse_list(text: &str) -> Result<Vec<u32>> {
    text.split(',')
        .map(|item| {
            item.parse()
                .with_context(|| format!("invalid number {item:?}"))
        })
        .collect()
}

fn parse_method(text: &str) -> Result<Method> {
    Ok(match text {
        "random" => Method::Random,
        "sobol" => Method::Sobol,
        "tpe" => Method::Tpe,
        other => bail!("invalid method {other:?}: expected random, sobol or tpe"),
    })
}

fn method_name(method: Method) -> &'static str {
    match method {
        Method::Grid => "grid",
        Method::Random => "random",
        Method::Sobol => "sobol",
        Method::Tpe => "tpe",
    }
}

/// Runs one sequential search and returns the best value after each budget.
fn run(
    args: &Args,
    method: Method,
    seed: u64,
    space: &[ParameterSpec],
    objective: Objective,
) -> Result<Vec<f64>> {
    let mut spec = SweepSpec::parse(BASE_SPEC, Path::new(".")).context("invalid base spec")?;
    spec.search.method = method;
    spec.search.seed = seed;
    spec.search.max_trials = args.trials;
    spec.objective.goal = Goal::Minimize;
    spec.parameters = space.to_vec();
    if let Some(n_ei_candidates) = args.n_ei_candidates {
        spec.search.tpe.n_ei_candidates = n_ei_candidates;
    }
    if let Some(prior_weight) = args.prior_weight {
        spec.search.tpe.prior_weight = prior_weight;
    }

    let mut observations: Vec<Observation> = Vec::with_capacity(args.trials as usize);
    let mut best = f64::INFINITY;
    let mut bests = Vec::with_capacity(args.budgets.len());
    for index in 0..args.trials {
        let params = search::trial_params(&spec, index, &observations)
            .with_context(|| format!("trial {index} was not planned"))?;
        let value = objective(&params);
        best = best.min(value);
        observations.push(Observation {
            index,
            params,
            value,
            pruned_at_epoch: None,
        });
        if args.budgets.contains(&(index + 1)) {
            bests.push(best);
        }
    }
    Ok(bests)
}

fn uniform(name: &str, min: f64, max: f64) -> ParameterSpec {
    ParameterSpec {
        name: name.to_string(),
        domain: Domain::Uniform { min, max, q: None },
        when: Vec::new(),
    }
}

fn float(params: &[(String, Value)], name: &str) -> f64 {
    let value = params.iter().find(|(n, _)| n == name).map(|(_, v)| v);
    value
        .and_then(Value::as_f64)
        .unwrap_or_else(|| panic!("parameter {name} missing from {params:?}"))
}

fn branin_space() -> Vec<ParameterSpec> {
    vec![uniform("x1", -5.0, 10.0), uniform("x2", 0.0, 15.0)]
}

/// Branin-Hoo; the global minimum is 0.397887 at three points.
fn branin(params: &[(String, Value)]) -> f64 {
    let (x1, x2) = (float(params, "x1"), float(params, "x2"));
    let pi = std::f64::consts::PI;
    let b = 5.1 / (4.0 * pi * pi);
    let c = 5.0 / pi;
    let t = 1.0 / (8.0 * pi);
    (x2 - b * x1 * x1 + c * x1 - 6.0).powi(2) + 10.0 * (1.0 - t) * x1.cos() + 10.0
}

fn hartmann6_space() -> Vec<ParameterSpec> {
    (0..6)
        .map(|i| uniform(&format!("x{i}"), 0.0, 1.0))
        .collect()
}

/// Hartmann-6 on [0, 1]^6; the global minimum is -3.32237.
fn hartmann6(params: &[(String, Value)]) -> f64 {
    const ALPHA: [f64; 4] = [1.0, 1.2, 3.0, 3.2];
    const A: [[f64; 6]; 4] = [
        [10.0, 3.0, 17.0, 3.5, 1.7, 8.0],
        [0.05, 10.0, 17.0, 0.1, 8.0, 14.0],
        [3.0, 3.5, 1.7, 10.0, 17.0, 8.0],
        [17.0, 8.0, 0.05, 10.0, 0.1, 14.0],
    ];
    const P: [[f64; 6]; 4] = [
        [0.1312, 0.1696, 0.5569, 0.0124, 0.8283, 0.5886],
        [0.2329, 0.4135, 0.8307, 0.3736, 0.1004, 0.9991],
        [0.2348, 0.1451, 0.3522, 0.2883, 0.3047, 0.6650],
        [0.4047, 0.8828, 0.8732, 0.5743, 0.1091, 0.0381],
    ];
    let x: Vec<f64> = (0..6).map(|i| float(params, &format!("x{i}"))).collect();
    -(0..4)
        .map(|i| {
            let exponent: f64 = (0..6).map(|j| A[i][j] * (x[j] - P[i][j]).powi(2)).sum();
            ALPHA[i] * (-exponent).exp()
        })
        .sum::<f64>()
}

/// A categorical `kind`, a float `x` and two parameters that exist for one kind each: a
/// log-uniform `scale` for "a" and an int `n` for "b".
fn mixed_space() -> Vec<ParameterSpec> {
    let kinds = ["a", "b", "c"].map(|k| Value::String(k.to_string()));
    let when_kind = |kind: &str| {
        vec![Condition {
            parent: "kind".to_string(),
            values: vec![Value::String(kind.to_string())],
        }]
    };
    vec![
        ParameterSpec {
            name: "kind".to_string(),
            domain: Domain::Values(kinds.to_vec()),
            when: Vec::new(),
        },
        uniform("x", -5.0, 5.0),
        ParameterSpec {
            name: "scale".to_string(),
            domain: Domain::LogUniform {
                min: 1e-3,
                max: 10.0,
                q: None,
            },
            when: when_kind("a"),
        },
        ParameterSpec {
            name: "n".to_string(),
            domain: Domain::Int {
                min: 1,
                max: 16,
                step: 1,
            },
            when: when_kind("b"),
        },
    ]
}

/// The mixed function; the global minimum is 0 at kind "a", x = 1, scale = 0.1. Kind "b" has
/// its minimum 0.3 at x = -2, n = 11, and kind "c" its minimum 1 at x = 0 and x = ±pi.
/// `scripts/bench_search.py` defines the same function for Optuna.
fn mixed(params: &[(String, Value)]) -> f64 {
    let kind = params
        .iter()
        .find(|(n, _)| n == "kind")
        .and_then(|(_, v)| v.as_str())
        .expect("kind is always present");
    let x = float(params, "x");
    match kind {
        "a" => (x - 1.0).powi(2) / 4.0 + (float(params, "scale").log10() + 1.0).powi(2),
        "b" => 0.3 + (x + 2.0).powi(2) / 8.0 + ((float(params, "n") - 11.0) / 4.0).powi(2),
        _ => 1.0 + x.sin().powi(2),
    }
}
