//! Sweep specs: the TOML a user writes, parsed and validated in full before any trial exists.
//!
//! `docs/spec.md` documents every key. Each error names the dotted key path, the value found and
//! what is allowed, so a user can fix the spec without reading this code.

mod early_stopping;
mod parameters;
mod section;
mod wandb;

use std::path::{Path, PathBuf};

use tunefleet_proto::hyper;
use tunefleet_proto::Value;

pub use self::early_stopping::{EarlyStoppingSpec, HalvingRule, MedianRule};

use self::early_stopping::parse_early_stopping;
use self::parameters::parse_parameters;
use self::section::{describe, invalid, schema_error, to_value, toml_error, Section};
use crate::ensemble::SelectionMetric;
use crate::search;

pub use self::wandb::{wandb_to_table, wandb_to_toml};

/// Maximum length of a sweep name, in characters.
const MAX_NAME_CHARS: usize = 128;
/// Maximum number of trials in one sweep. It also caps the default `max_trials` of a grid.
const MAX_TRIALS: u32 = 100_000;
/// Maximum number of trials of a Sobol sweep: the length of `sobol_burley`'s sequence.
const MAX_SOBOL_TRIALS: u32 = 1 << 16;
const DEFAULT_RANDOM_TRIALS: u32 = 10;
const DEFAULT_EPOCHS: u32 = 10;
const MAX_EPOCHS: u32 = 10_000;
const DEFAULT_ENSEMBLE_SIZE: u32 = 10;
const MAX_ENSEMBLE_SIZE: u32 = 1_000;

const TOP_KEYS: &[&str] = &[
    "name",
    "description",
    "objective",
    "search",
    "parameters",
    "task",
    "ensemble",
    "early_stopping",
];
const OBJECTIVE_KEYS: &[&str] = &["metric", "goal"];
const SEARCH_KEYS: &[&str] = &[
    "method",
    "max_trials",
    "max_concurrent",
    "max_failed",
    "seed",
    "tpe",
];
const TPE_KEYS: &[&str] = &[
    "n_startup_trials",
    "n_ei_candidates",
    "gamma",
    "prior_weight",
    "multivariate",
];
const TASK_KEYS: &[&str] = &[
    "model",
    "dataset",
    "format",
    "label_column",
    "image_size",
    "normalize_mean",
    "normalize_std",
    "pretrained",
    "module",
    "epochs",
    "hyperparameters",
];
/// Dataset formats the trainer reads; `format` unset infers one from the dataset path.
const FORMATS: &[&str] = &["npz", "cifar10", "mnist", "csv", "imagefolder"];
/// The side in pixels that image-folder images are resized to when `image_size` is unset.
const DEFAULT_IMAGE_SIZE: u32 = 32;
const MAX_IMAGE_SIZE: u32 = 1024;
const ENSEMBLE_KEYS: &[&str] = &["size", "init_size", "metric"];

const OBJECTIVE_METRICS: &[&str] = &[
    "val_accuracy",
    "val_loss",
    "train_loss",
    "val_macro_f1",
    "val_macro_precision",
    "val_macro_recall",
];
const GOALS: &[&str] = &["maximize", "minimize"];
const METHODS: &[&str] = &["grid", "random", "sobol", "tpe"];
const SELECTION_METRICS: &[&str] = &["accuracy", "loss", "macro_f1"];

/// A validated sweep spec. Every key of `docs/spec.md` maps onto one field.
#[derive(Debug, Clone, PartialEq)]
pub struct SweepSpec {
    pub name: String,
    /// Free text about the sweep, kept for people reading it.
    pub description: Option<String>,
    pub objective: ObjectiveSpec,
    pub search: SearchSpec,
    /// The search space, in the order the spec declares the parameters.
    pub parameters: Vec<ParameterSpec>,
    pub task: TaskSpec,
    pub ensemble: EnsembleSpec,
    /// `None`: every trial runs all its epochs.
    pub early_stopping: Option<EarlyStoppingSpec>,
}

/// The metric a sweep optimises and its direction.
#[derive(Debug, Clone, PartialEq)]
pub struct ObjectiveSpec {
    /// One of `val_accuracy`, `val_loss`, `train_loss`.
    pub metric: String,
    pub goal: Goal,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Goal {
    Maximize,
    Minimize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Grid,
    Random,
    Sobol,
    Tpe,
}

/// How trials are generated and how many may run or fail.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchSpec {
    pub method: Method,
    pub max_trials: u32,
    /// `None`: as many as the fleet has free slots.
    pub max_concurrent: Option<u32>,
    /// The sweep fails once more than this many trials have failed; `None`: no limit.
    pub max_failed: Option<u32>,
    pub seed: u64,
    /// Settings of the tree-structured Parzen estimator, read when `method` is `Tpe`.
    pub tpe: TpeSpec,
}

/// Settings of `search.method = "tpe"`, named as in Optuna's `TPESampler`.
#[derive(Debug, Clone, PartialEq)]
pub struct TpeSpec {
    /// Trials drawn at random before the estimator takes over.
    pub n_startup_trials: u32,
    /// Candidates drawn from the good trials' density; the best ratio of densities wins.
    pub n_ei_candidates: u32,
    /// The fraction of observations counted as good, or `None` for Optuna's default
    /// `min(ceil(0.1 n), 25)`.
    pub gamma: Option<f64>,
    /// Weight of the prior component in each Parzen estimator.
    pub prior_weight: f64,
    /// Whether the unconditional parameters are modelled jointly instead of one by one.
    pub multivariate: bool,
}

impl Default for TpeSpec {
    fn default() -> Self {
        Self {
            n_startup_trials: 10,
            // Optuna's default is 24. With 48 the search bench's median best value was lower
            // on all three functions (100 seeds), each gap within one standard error.
            n_ei_candidates: 48,
            gamma: None,
            prior_weight: 1.0,
            multivariate: true,
        }
    }
}

/// One parameter of the search space.
#[derive(Debug, Clone, PartialEq)]
pub struct ParameterSpec {
    pub name: String,
    pub domain: Domain,
    /// The parameter exists in a trial only when every condition holds; empty: always.
    pub when: Vec<Condition>,
}

/// A condition on an earlier parameter: it is active and takes one of `values`.
#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    pub parent: String,
    /// Values of the parent's domain, as the domain stores them.
    pub values: Vec<Value>,
}

/// The values a parameter can take.
#[derive(Debug, Clone, PartialEq)]
pub enum Domain {
    /// An explicit list, each value keeping its TOML type, drawn with equal probability.
    Values(Vec<Value>),
    /// An explicit list drawn with the given probabilities, which are positive and sum to 1.
    Weighted {
        values: Vec<Value>,
        weights: Vec<f64>,
    },
    /// A single value.
    Constant(Value),
    /// Floats drawn uniformly between min and max, rounded to a multiple of `q` if set.
    Uniform { min: f64, max: f64, q: Option<f64> },
    /// Floats whose logarithm is uniform between ln min and ln max, with min above 0, rounded
    /// to a multiple of `q` if set.
    LogUniform { min: f64, max: f64, q: Option<f64> },
    /// Floats drawn from a normal distribution, clipped to [min, max] and rounded to a
    /// multiple of `q` if set. An unbounded end is infinite.
    Normal {
        mu: f64,
        sigma: f64,
        min: f64,
        max: f64,
        q: Option<f64>,
    },
    /// `exp` of a normal draw with mean `mu` and standard deviation `sigma`, then clipped and
    /// rounded as in `Normal`.
    LogNormal {
        mu: f64,
        sigma: f64,
        min: f64,
        max: f64,
        q: Option<f64>,
    },
    /// Ints min, min + step, ... up to and including max when it lies on the step.
    Int { min: i64, max: i64, step: i64 },
    /// Ints from min to max whose logarithm is about uniform, with min at least 1.
    LogInt { min: i64, max: i64 },
}

/// The training task every trial runs.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskSpec {
    /// One of `tunefleet_proto::hyper::MODELS`.
    pub model: String,
    /// The dataset file or directory, resolved against the spec's base directory.
    pub dataset: PathBuf,
    /// One of `npz`, `cifar10`, `mnist`, `csv`, `imagefolder`; `None` lets the trainer infer
    /// it.
    pub format: Option<String>,
    /// The label column of a CSV dataset; `None` means "label".
    pub label_column: Option<String>,
    /// The side in pixels that image-folder images are resized to.
    pub image_size: u32,
    /// The per-channel normalisation of image formats; `None` keeps the format's default.
    pub normalize: Option<Normalize>,
    /// Weights to start from, resolved against the spec's base directory.
    pub pretrained: Option<PathBuf>,
    /// The TorchScript module of model "torchscript", resolved against the base directory.
    pub module: Option<PathBuf>,
    pub epochs: u32,
    /// Fixed hyperparameters, in declaration order.
    pub hyperparameters: Vec<(String, Value)>,
}

/// Per-channel normalisation: each channel's pixels, scaled to [0, 1], become
/// `(pixel - mean) / std`.
#[derive(Debug, Clone, PartialEq)]
pub struct Normalize {
    /// One value per channel.
    pub mean: Vec<f64>,
    /// One value per channel, each > 0.
    pub std: Vec<f64>,
}

/// How the final ensemble is selected.
#[derive(Debug, Clone, PartialEq)]
pub struct EnsembleSpec {
    /// Selection rounds; each member's weight is its selection count over this size.
    pub size: u32,
    /// How many of the best single trials start the ensemble (sorted initialisation).
    pub init_size: u32,
    pub metric: SelectionMetric,
}

/// A spec that cannot be used; the message names the key, the value and what is allowed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct SpecError(pub String);

impl SweepSpec {
    /// Parses and validates a spec, resolving a relative dataset path against `base_dir`.
    ///
    /// The dataset file is not opened here, so parsing does no I/O.
    pub fn parse(toml_text: &str, base_dir: &Path) -> Result<SweepSpec, SpecError> {
        let root: toml::Table = toml_text
            .parse()
            .map_err(|err| toml_error(toml_text, err))?;
        let root = Section::root(&root);
        root.check_keys(TOP_KEYS)?;

        let name = parse_name(&root)?;
        let description = root.string("description", "a string")?.map(str::to_string);
        let objective = parse_objective(&root.section("objective")?)?;
        let search_section = root.section("search")?;
        let method = parse_method(&search_section)?;
        let task_section = root.section("task")?;
        let mut task = parse_task(&task_section, base_dir)?;
        let parameters = parse_parameters(&root.section("parameters")?, &task.model, method)?;
        task.hyperparameters = parse_fixed(&task_section.section("hyperparameters")?, &task.model)?;
        check_fixed_not_searched(&task.hyperparameters, &parameters)?;
        let search = parse_search(&search_section, method, &parameters)?;
        let ensemble = parse_ensemble(&root.section("ensemble")?, &objective)?;
        let early_stopping = parse_early_stopping(&root.section("early_stopping")?, task.epochs)?;

        Ok(SweepSpec {
            name,
            description,
            objective,
            search,
            parameters,
            task,
            ensemble,
            early_stopping,
        })
    }
}

/// Returns the spec as native TOML: a `.yaml` or `.yml` file is a W&B sweep configuration and is
/// converted, any other file is already TOML.
pub fn native_spec_text(path: &Path, text: &str) -> Result<String, SpecError> {
    let extension = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    if extension.eq_ignore_ascii_case("yaml") || extension.eq_ignore_ascii_case("yml") {
        wandb_to_toml(text)
    } else {
        Ok(text.to_string())
    }
}

fn parse_name(root: &Section) -> Result<String, SpecError> {
    let expected = format!("a non-blank string of at most {MAX_NAME_CHARS} characters");
    let name = root
        .string("name", &expected)?
        .ok_or_else(|| root.missing("name", &expected))?;
    let num_chars = name.chars().count();
    if name.trim().is_empty() {
        return Err(invalid("name", &expected, &format!("{name:?}")));
    }
    if num_chars > MAX_NAME_CHARS {
        let got = format!("a string of {num_chars} characters");
        return Err(invalid("name", &expected, &got));
    }
    // Names are printed in tables and logs, where a control character could break a line or
    // inject a terminal escape sequence.
    if name.chars().any(char::is_control) {
        let expected = format!("{expected} without control characters");
        return Err(invalid("name", &expected, &format!("{name:?}")));
    }
    Ok(name.to_string())
}

fn parse_objective(section: &Section) -> Result<ObjectiveSpec, SpecError> {
    section.check_keys(OBJECTIVE_KEYS)?;
    let metric = section.required_choice("metric", OBJECTIVE_METRICS)?;
    let goal = match section.choice("goal", GOALS)? {
        Some("maximize") => Goal::Maximize,
        Some(_) => Goal::Minimize,
        None if metric.ends_with("loss") => Goal::Minimize,
        None => Goal::Maximize,
    };
    Ok(ObjectiveSpec {
        metric: metric.to_string(),
        goal,
    })
}

fn parse_method(section: &Section) -> Result<Method, SpecError> {
    section.check_keys(SEARCH_KEYS)?;
    Ok(match section.choice("method", METHODS)? {
        Some("grid") => Method::Grid,
        Some("sobol") => Method::Sobol,
        Some("tpe") => Method::Tpe,
        _ => Method::Random,
    })
}

fn parse_tpe(section: &Section, method: Method) -> Result<TpeSpec, SpecError> {
    if section.table.is_none() {
        return Ok(TpeSpec::default());
    }
    if method != Method::Tpe {
        return Err(SpecError(format!(
            "invalid {}: only search.method = \"tpe\" reads it",
            section.path
        )));
    }
    section.check_keys(TPE_KEYS)?;
    let defaults = TpeSpec::default();
    let gamma = section.float("gamma", "a number > 0 and <= 1", |x| x > 0.0 && x <= 1.0)?;
    let prior_weight = section.float("prior_weight", "a number > 0", |x| x > 0.0)?;
    Ok(TpeSpec {
        n_startup_trials: section
            .u32("n_startup_trials", 0, MAX_TRIALS)?
            .unwrap_or(defaults.n_startup_trials),
        n_ei_candidates: section
            .u32("n_ei_candidates", 1, 10_000)?
            .unwrap_or(defaults.n_ei_candidates),
        gamma,
        prior_weight: prior_weight.unwrap_or(defaults.prior_weight),
        multivariate: section
            .bool("multivariate")?
            .unwrap_or(defaults.multivariate),
    })
}

/// Reads the rest of `[search]`, whose default `max_trials` depends on the parsed space.
fn parse_search(
    section: &Section,
    method: Method,
    parameters: &[ParameterSpec],
) -> Result<SearchSpec, SpecError> {
    let max_allowed = if method == Method::Sobol {
        MAX_SOBOL_TRIALS
    } else {
        MAX_TRIALS
    };
    let max_trials = match section.u32("max_trials", 1, max_allowed)? {
        Some(max_trials) => max_trials,
        None if method != Method::Grid => DEFAULT_RANDOM_TRIALS,
        None => {
            let grid_size = search::grid_size(parameters).unwrap_or(u64::MAX);
            // The grid has at least one point because every domain is non-empty.
            grid_size.min(MAX_TRIALS.into()) as u32
        }
    };
    let seed = section.int("seed", 0, i64::MAX)?.unwrap_or(0);
    Ok(SearchSpec {
        method,
        max_trials,
        max_concurrent: section.u32("max_concurrent", 1, u32::MAX)?,
        max_failed: section.u32("max_failed", 0, u32::MAX)?,
        // The range check above keeps the seed non-negative.
        seed: seed as u64,
        tpe: parse_tpe(&section.section("tpe")?, method)?,
    })
}

/// Reads `[task]` except its fixed hyperparameters, which need the model first.
fn parse_task(section: &Section, base_dir: &Path) -> Result<TaskSpec, SpecError> {
    section.check_keys(TASK_KEYS)?;
    let model = section.required_choice("model", hyper::MODELS)?;

    let expected = "a non-empty path to the dataset file";
    let dataset = section
        .string("dataset", expected)?
        .ok_or_else(|| section.missing("dataset", expected))?;
    if dataset.is_empty() {
        return Err(invalid("task.dataset", expected, "\"\""));
    }

    let format = section.choice("format", FORMATS)?.map(str::to_string);
    let label_column = section
        .string("label_column", "a non-empty column name")?
        .map(str::to_string);
    if label_column.as_deref() == Some("") {
        return Err(invalid(
            "task.label_column",
            "a non-empty column name",
            "\"\"",
        ));
    }
    let image_size = parse_image_size(section, format.as_deref())?;
    let normalize = parse_normalize(section)?;
    let pretrained = optional_path(
        section,
        "pretrained",
        "a path to a .safetensors or .ot file",
    )?;
    let module = optional_path(section, "module", "a path to a TorchScript module file")?;
    match (model, &module) {
        ("torchscript", None) => {
            return Err(section.missing(
                "module",
                "a path to a TorchScript module file for model \"torchscript\"",
            ))
        }
        (other, Some(_)) if other != "torchscript" => {
            return Err(invalid(
                "task.module",
                "no module unless model is \"torchscript\"",
                &format!("a module with model {other:?}"),
            ))
        }
        _ => {}
    }

    let epochs = section.u32("epochs", 1, MAX_EPOCHS)?;
    Ok(TaskSpec {
        model: model.to_string(),
        dataset: base_dir.join(dataset),
        format,
        label_column,
        image_size,
        normalize,
        pretrained: pretrained.map(|path| base_dir.join(path)),
        module: module.map(|path| base_dir.join(path)),
        epochs: epochs.unwrap_or(DEFAULT_EPOCHS),
        hyperparameters: Vec::new(),
    })
}

/// Reads `image_size`, which only the image-folder format uses.
fn parse_image_size(section: &Section, format: Option<&str>) -> Result<u32, SpecError> {
    let image_size = section.u32("image_size", 1, MAX_IMAGE_SIZE)?;
    match (image_size, format) {
        (Some(_), Some(format)) if format != "imagefolder" => Err(invalid(
            "task.image_size",
            "no image_size unless format is \"imagefolder\"",
            &format!("an image_size with format {format:?}"),
        )),
        _ => Ok(image_size.unwrap_or(DEFAULT_IMAGE_SIZE)),
    }
}

/// Reads `normalize_mean` and `normalize_std`, which come together with one value per channel.
fn parse_normalize(section: &Section) -> Result<Option<Normalize>, SpecError> {
    let mean = section.floats(
        "normalize_mean",
        "an array of numbers, one per channel",
        |_| true,
    )?;
    let std = section.floats(
        "normalize_std",
        "an array of numbers > 0, one per channel",
        |x| x > 0.0,
    )?;
    let (mean, std) = match (mean, std) {
        (None, None) => return Ok(None),
        (Some(mean), Some(std)) => (mean, std),
        (Some(_), None) => {
            return Err(section.missing("normalize_std", "one value per normalize_mean value"))
        }
        (None, Some(_)) => {
            return Err(section.missing("normalize_mean", "one value per normalize_std value"))
        }
    };
    for (key, values) in [("normalize_mean", &mean), ("normalize_std", &std)] {
        if !matches!(values.len(), 1 | 3) {
            return Err(invalid(
                &format!("task.{key}"),
                "1 or 3 values, one per channel",
                &num_values(values.len()),
            ));
        }
    }
    if mean.len() != std.len() {
        return Err(invalid(
            "task.normalize_std",
            &format!("{} values like normalize_mean", mean.len()),
            &num_values(std.len()),
        ));
    }
    Ok(Some(Normalize { mean, std }))
}

fn num_values(count: usize) -> String {
    match count {
        1 => "1 value".to_string(),
        _ => format!("{count} values"),
    }
}

fn optional_path<'a>(
    section: &Section<'a>,
    key: &str,
    expected: &str,
) -> Result<Option<&'a str>, SpecError> {
    let path = section.string(key, expected)?;
    if path == Some("") {
        return Err(invalid(&section.key_path(key), expected, "\"\""));
    }
    Ok(path)
}

fn parse_fixed(section: &Section, model: &str) -> Result<Vec<(String, Value)>, SpecError> {
    let Some(table) = section.table else {
        return Ok(Vec::new());
    };
    let mut fixed = Vec::with_capacity(table.len());
    for (name, raw) in table {
        let path = section.key_path(name);
        let def = hyper::lookup(model, name).map_err(|err| schema_error(&path, err))?;
        let value = to_value(&path, raw)?;
        hyper::check_value(def, &value).map_err(|err| schema_error(&path, err))?;
        fixed.push((name.clone(), value));
    }
    Ok(fixed)
}

fn check_fixed_not_searched(
    fixed: &[(String, Value)],
    parameters: &[ParameterSpec],
) -> Result<(), SpecError> {
    for (name, _) in fixed {
        if parameters.iter().any(|parameter| &parameter.name == name) {
            return Err(SpecError(format!(
                "invalid task.hyperparameters.{name}: {name:?} is also a search parameter in \
                 [parameters], so remove it from one of the two"
            )));
        }
    }
    Ok(())
}

fn parse_ensemble(section: &Section, objective: &ObjectiveSpec) -> Result<EnsembleSpec, SpecError> {
    section.check_keys(ENSEMBLE_KEYS)?;
    let size = section
        .u32("size", 1, MAX_ENSEMBLE_SIZE)?
        .unwrap_or(DEFAULT_ENSEMBLE_SIZE);

    let init_size = match section.get("init_size") {
        Some(toml::Value::Integer(i)) if (1..=i64::from(size)).contains(i) => *i as u32,
        Some(raw) => {
            let expected = format!("an int from 1 to ensemble.size ({size})");
            let got = match raw {
                toml::Value::Integer(i) => i.to_string(),
                other => describe(other),
            };
            return Err(invalid("ensemble.init_size", &expected, &got));
        }
        None => 1,
    };

    let metric = match section.choice("metric", SELECTION_METRICS)? {
        Some("accuracy") => SelectionMetric::Accuracy,
        Some("macro_f1") => SelectionMetric::MacroF1,
        Some(_) => SelectionMetric::Loss,
        None if objective.metric.ends_with("accuracy") => SelectionMetric::Accuracy,
        None if objective.metric.ends_with("f1") => SelectionMetric::MacroF1,
        None => SelectionMetric::Loss,
    };
    Ok(EnsembleSpec {
        size,
        init_size,
        metric,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a valid spec up to the end of `[task]`, followed by `rest`.
    fn spec_text(rest: &str) -> String {
        format!(
            "name = \"t\"\n[objective]\nmetric = \"val_accuracy\"\n\
             [task]\nmodel = \"mlp\"\ndataset = \"d.npz\"\n{rest}"
        )
    }

    fn parse(text: &str) -> Result<SweepSpec, SpecError> {
        SweepSpec::parse(text, Path::new("/specs"))
    }

    fn parse_ok(text: &str) -> SweepSpec {
        parse(text).unwrap_or_else(|err| panic!("spec should parse: {err}\n{text}"))
    }

    fn parse_err(text: &str) -> String {
        match parse(text) {
            Ok(spec) => panic!("spec should fail: {spec:?}\n{text}"),
            Err(err) => err.0,
        }
    }

    /// Invalid specs with the exact message each must produce.
    fn invalid_cases() -> Vec<(&'static str, String, String)> {
        let long_name = "a".repeat(MAX_NAME_CHARS + 1);
        let task = "[task]\nmodel = \"mlp\"\ndataset = \"d.npz\"\n";
        let objective = "[objective]\nmetric = \"val_accuracy\"\n";
        let cases: Vec<(&str, String, &str)> =
            vec![
            (
                "unknown top-level key",
                format!("title = \"x\"\n{}", spec_text("")),
                "unknown key title: expected one of name, description, objective, search, \
                 parameters, task, ensemble, early_stopping",
            ),
            (
                "section not a table",
                format!("search = 5\n{}", spec_text("")),
                "invalid search: expected a table, got 5 (int)",
            ),
            (
                "missing name",
                format!("{objective}{task}"),
                "missing name: expected a non-blank string of at most 128 characters",
            ),
            (
                "blank name",
                format!("name = \" \"\n{objective}{task}"),
                "invalid name: expected a non-blank string of at most 128 characters, got \" \"",
            ),
            (
                "name too long",
                format!("name = \"{long_name}\"\n{objective}{task}"),
                "invalid name: expected a non-blank string of at most 128 characters, got a \
                 string of 129 characters",
            ),
            (
                "name not a string",
                format!("name = 5\n{objective}{task}"),
                "invalid name: expected a non-blank string of at most 128 characters, got 5 (int)",
            ),
            (
                "name with a control character",
                format!("name = \"a\\nb\"\n{objective}{task}"),
                "invalid name: expected a non-blank string of at most 128 characters without \
                 control characters, got \"a\\nb\"",
            ),
            (
                "missing objective metric",
                format!("name = \"t\"\n{task}"),
                "missing objective.metric: expected one of \"val_accuracy\", \"val_loss\", \
                 \"train_loss\", \"val_macro_f1\", \"val_macro_precision\", \
                 \"val_macro_recall\"",
            ),
            (
                "unknown objective metric",
                format!("name = \"t\"\n[objective]\nmetric = \"accuracy\"\n{task}"),
                "invalid objective.metric: expected one of \"val_accuracy\", \"val_loss\", \
                 \"train_loss\", \"val_macro_f1\", \"val_macro_precision\", \
                 \"val_macro_recall\", got \"accuracy\"",
            ),
            (
                "unknown goal",
                format!("name = \"t\"\n{objective}goal = \"max\"\n{task}"),
                "invalid objective.goal: expected one of \"maximize\", \"minimize\", got \"max\"",
            ),
            (
                "unknown objective key",
                format!("name = \"t\"\n{objective}direction = \"max\"\n{task}"),
                "unknown key objective.direction: expected one of metric, goal",
            ),
            (
                "unknown method",
                spec_text("[search]\nmethod = \"bayes\""),
                "invalid search.method: expected one of \"grid\", \"random\", \"sobol\", \
                 \"tpe\", got \"bayes\"",
            ),
            (
                "unknown search key",
                spec_text("[search]\nmax_trial = 5"),
                "unknown key search.max_trial: expected one of method, max_trials, \
                 max_concurrent, max_failed, seed, tpe",
            ),
            (
                "max_trials zero",
                spec_text("[search]\nmax_trials = 0"),
                "invalid search.max_trials: expected an int from 1 to 100000, got 0",
            ),
            (
                "max_trials above limit",
                spec_text("[search]\nmax_trials = 100001"),
                "invalid search.max_trials: expected an int from 1 to 100000, got 100001",
            ),
            (
                "max_trials float",
                spec_text("[search]\nmax_trials = 12.0"),
                "invalid search.max_trials: expected an int from 1 to 100000, got 12.0 (float)",
            ),
            (
                "max_trials string",
                spec_text("[search]\nmax_trials = \"10\""),
                "invalid search.max_trials: expected an int from 1 to 100000, got \"10\" (string)",
            ),
            (
                "max_concurrent zero",
                spec_text("[search]\nmax_concurrent = 0"),
                "invalid search.max_concurrent: expected an int from 1 to 4294967295, got 0",
            ),
            (
                "max_concurrent above u32",
                spec_text("[search]\nmax_concurrent = 4294967296"),
                "invalid search.max_concurrent: expected an int from 1 to 4294967295, got \
                 4294967296",
            ),
            (
                "max_failed negative",
                spec_text("[search]\nmax_failed = -1"),
                "invalid search.max_failed: expected an int from 0 to 4294967295, got -1",
            ),
            (
                "seed negative",
                spec_text("[search]\nseed = -1"),
                "invalid search.seed: expected an int >= 0, got -1",
            ),
            (
                "missing model",
                format!("name = \"t\"\n{objective}[task]\ndataset = \"d.npz\"\n"),
                "missing task.model: expected one of \"mlp\", \"cnn\", \"resnet18\", \"resnet34\", \"resnet50\", \
                 \"torchscript\"",
            ),
            (
                "unknown model",
                format!("name = \"t\"\n{objective}[task]\nmodel = \"resnet\"\n"),
                "invalid task.model: expected one of \"mlp\", \"cnn\", \"resnet18\", \"resnet34\", \"resnet50\", \
                 \"torchscript\", got \"resnet\"",
            ),
            (
                "missing dataset",
                format!("name = \"t\"\n{objective}[task]\nmodel = \"mlp\"\n"),
                "missing task.dataset: expected a non-empty path to the dataset file",
            ),
            (
                "empty dataset",
                format!("name = \"t\"\n{objective}[task]\nmodel = \"mlp\"\ndataset = \"\"\n"),
                "invalid task.dataset: expected a non-empty path to the dataset file, got \"\"",
            ),
            (
                "epochs zero",
                spec_text("epochs = 0"),
                "invalid task.epochs: expected an int from 1 to 10000, got 0",
            ),
            (
                "epochs above limit",
                spec_text("epochs = 10001"),
                "invalid task.epochs: expected an int from 1 to 10000, got 10001",
            ),
            (
                "unknown task key",
                spec_text("epoch = 5"),
                "unknown key task.epoch: expected one of model, dataset, format, label_column, \
                 image_size, normalize_mean, normalize_std, pretrained, module, epochs, \
                 hyperparameters",
            ),
            (
                "unknown format",
                spec_text("format = \"parquet\""),
                "invalid task.format: expected one of \"npz\", \"cifar10\", \"mnist\", \"csv\", \
                 \"imagefolder\", got \"parquet\"",
            ),
            (
                "image size zero",
                spec_text("image_size = 0"),
                "invalid task.image_size: expected an int from 1 to 1024, got 0",
            ),
            (
                "image size with another format",
                spec_text("format = \"npz\"\nimage_size = 64"),
                "invalid task.image_size: expected no image_size unless format is \
                 \"imagefolder\", got an image_size with format \"npz\"",
            ),
            (
                "normalize mean without std",
                spec_text("normalize_mean = [0.5, 0.5, 0.5]"),
                "missing task.normalize_std: expected one value per normalize_mean value",
            ),
            (
                "normalize std without mean",
                spec_text("normalize_std = [0.5]"),
                "missing task.normalize_mean: expected one value per normalize_std value",
            ),
            (
                "normalize std zero",
                spec_text("normalize_mean = [0.5]\nnormalize_std = [0.0]"),
                "invalid task.normalize_std: expected an array of numbers > 0, one per channel, \
                 got 0.0",
            ),
            (
                "normalize mean not an array",
                spec_text("normalize_mean = 0.5\nnormalize_std = [0.2]"),
                "invalid task.normalize_mean: expected an array of numbers, one per channel, got \
                 0.5 (float)",
            ),
            (
                "normalize mean of strings",
                spec_text("normalize_mean = [\"a\"]\nnormalize_std = [0.2]"),
                "invalid task.normalize_mean: expected an array of numbers, one per channel, got \
                 \"a\" (string)",
            ),
            (
                "normalize two channels",
                spec_text("normalize_mean = [0.5, 0.5]\nnormalize_std = [0.2, 0.2]"),
                "invalid task.normalize_mean: expected 1 or 3 values, one per channel, got 2 \
                 values",
            ),
            (
                "normalize lengths differ",
                spec_text("normalize_mean = [0.5, 0.5, 0.5]\nnormalize_std = [0.2]"),
                "invalid task.normalize_std: expected 3 values like normalize_mean, got 1 value",
            ),
            (
                "module without torchscript",
                spec_text("module = \"net.pt\""),
                "invalid task.module: expected no module unless model is \"torchscript\", got a \
                 module with model \"mlp\"",
            ),
            (
                "empty pretrained",
                spec_text("pretrained = \"\""),
                "invalid task.pretrained: expected a path to a .safetensors or .ot file, got \"\"",
            ),
            (
                "unknown parameter",
                spec_text("[parameters]\nmomentu = [0.9]"),
                "parameters.momentu: unknown hyperparameter \"momentu\" for model \"mlp\": \
                 expected one of lr, batch_size, optimizer, momentum, weight_decay, dropout, \
                 hidden_size, hidden_layers, freeze_backbone, unfreeze_epoch, backbone_lr_factor, lr_schedule, warmup_epochs, \
                 step_size, gamma, label_smoothing, grad_clip_norm, patience, precision, augment, \
                 crop_padding",
            ),
            (
                "parameter of another model",
                spec_text("[parameters]\nchannels = [8]"),
                "parameters.channels: unknown hyperparameter \"channels\" for model \"mlp\": \
                 expected one of lr, batch_size, optimizer, momentum, weight_decay, dropout, \
                 hidden_size, hidden_layers, freeze_backbone, unfreeze_epoch, backbone_lr_factor, lr_schedule, warmup_epochs, \
                 step_size, gamma, label_smoothing, grad_clip_norm, patience, precision, augment, \
                 crop_padding",
            ),
            (
                "listed value out of range",
                spec_text("[parameters]\nhidden_size = [64, 0]"),
                "parameters.hidden_size[1]: invalid hyperparameter \"hidden_size\": expected an \
                 int from 1 to 65536, got 0 (int)",
            ),
            (
                "listed float for int",
                spec_text("[parameters]\nhidden_size = { values = [64, 128.0] }"),
                "parameters.hidden_size.values[1]: invalid hyperparameter \"hidden_size\": \
                 expected an int from 1 to 65536, got 128.0 (float)",
            ),
            (
                "listed unknown optimizer",
                spec_text("[parameters]\noptimizer = [\"sgd\", \"lbfgs\"]"),
                "parameters.optimizer[1]: invalid hyperparameter \"optimizer\": expected one of \
                 \"sgd\", \"adam\", \"adamw\", got \"lbfgs\" (string)",
            ),
            (
                "empty list",
                spec_text("[parameters]\nlr = []"),
                "invalid parameters.lr: expected at least one value, got an empty array",
            ),
            (
                "empty values table",
                spec_text("[parameters]\nlr = { values = [] }"),
                "invalid parameters.lr.values: expected at least one value, got an empty array",
            ),
            (
                "values not an array",
                spec_text("[parameters]\nlr = { values = 0.1 }"),
                "invalid parameters.lr.values: expected an array of values, got 0.1 (float)",
            ),
            (
                "duplicate string",
                spec_text("[parameters]\noptimizer = [\"sgd\", \"adam\", \"sgd\"]"),
                "invalid parameters.optimizer[2]: \"sgd\" repeats parameters.optimizer[0], but \
                 values must be unique",
            ),
            (
                "duplicate float written as int",
                spec_text("[parameters]\nlr = [1, 1.0]"),
                "invalid parameters.lr[1]: 1.0 repeats parameters.lr[0], but values must be \
                 unique",
            ),
            (
                "nested array value",
                spec_text("[parameters]\nlr = [[0.1]]"),
                "invalid parameters.lr[0]: expected an int, float, string or bool, got an array",
            ),
            (
                "scalar parameter",
                spec_text("[parameters]\nlr = 0.01"),
                "invalid parameters.lr: expected an array of values or a table with a values, \
                 value or distribution key, got 0.01 (float), but a fixed value belongs in \
                 [task.hyperparameters] or in { value = ... }",
            ),
            (
                "empty parameter table",
                spec_text("[parameters]\nlr = {}"),
                "invalid parameters.lr: expected an array of values or a table with a values, \
                 value or distribution key, got an empty table",
            ),
            (
                "values and distribution",
                spec_text("[parameters]\nlr = { values = [0.1], distribution = \"uniform\" }"),
                "invalid parameters.lr: expected one of values, value or distribution, got both \
                 values and distribution",
            ),
            (
                "unknown parameter table key",
                spec_text("[parameters]\nlr = { vals = [0.1] }"),
                "unknown key parameters.lr.vals: expected one of values, value, distribution",
            ),
            (
                "extra key beside values",
                spec_text("[parameters]\nhidden_size = { values = [64], step = 2 }"),
                "unknown key parameters.hidden_size.step: expected one of values, weights, when",
            ),
            (
                "unknown distribution",
                spec_text("[parameters]\nlr = { distribution = \"beta\", min = 0.1, max = 1 }"),
                "invalid parameters.lr.distribution: expected one of \"uniform\", \
                 \"log_uniform\", \"normal\", \"log_normal\", \"int\", got \"beta\"",
            ),
            (
                "step on uniform",
                spec_text(
                    "[parameters]\n\
                     dropout = { distribution = \"uniform\", min = 0.0, max = 0.5, step = 0.1 }",
                ),
                "unknown key parameters.dropout.step: expected one of distribution, min, max, q, \
                 when",
            ),
            (
                "missing max",
                spec_text("[parameters]\ndropout = { distribution = \"uniform\", min = 0.0 }"),
                "missing parameters.dropout.max: expected a number",
            ),
            (
                "bound not a number",
                spec_text(
                    "[parameters]\n\
                     dropout = { distribution = \"uniform\", min = \"0\", max = 0.5 }",
                ),
                "invalid parameters.dropout.min: expected a number, got \"0\" (string)",
            ),
            (
                "bound outside schema",
                spec_text(
                    "[parameters]\ndropout = { distribution = \"uniform\", min = 0.0, max = 1.0 }",
                ),
                "parameters.dropout.max: invalid hyperparameter \"dropout\": expected a float >= \
                 0 and < 1, got 1.0 (float)",
            ),
            (
                "log_uniform min zero",
                spec_text(
                    "[parameters]\n\
                     weight_decay = { distribution = \"log_uniform\", min = 0.0, max = 0.1 }",
                ),
                "invalid parameters.weight_decay.min: expected a number > 0 for log_uniform, got \
                 0.0",
            ),
            (
                "log_uniform min outside schema",
                spec_text("[parameters]\n\
                 lr = { distribution = \"log_uniform\", min = 0.0, max = 1 }"),
                "parameters.lr.min: invalid hyperparameter \"lr\": expected a float > 0 and <= \
                 10, got 0.0 (float)",
            ),
            (
                "uniform min above max",
                spec_text(
                    "[parameters]\ndropout = { distribution = \"uniform\", min = 0.5, max = 0.1 }",
                ),
                "invalid parameters.dropout: expected min < max, got min = 0.5 and max = 0.1",
            ),
            (
                "uniform min equals max",
                spec_text("[parameters]\n\
                 lr = { distribution = \"uniform\", min = 0.1, max = 0.1 }"),
                "invalid parameters.lr: expected min < max, got min = 0.1 and max = 0.1",
            ),
            (
                "int distribution on float",
                spec_text("[parameters]\nlr = { distribution = \"int\", min = 1, max = 2 }"),
                "invalid parameters.lr.distribution: \"int\" is only for int hyperparameters and \
                 \"lr\" is a float, so use distribution = \"uniform\", \"log_uniform\", \"normal\" or \
                 \"log_normal\"",
            ),
            (
                "uniform distribution on int",
                spec_text(
                    "[parameters]\nbatch_size = { distribution = \"uniform\", min = 16, max = 64 }",
                ),
                "invalid parameters.batch_size.distribution: \"uniform\" is only for float \
                 hyperparameters and \"batch_size\" is an int, so use distribution = \"int\" or \
                 values = [...]",
            ),
            (
                "log_uniform on string",
                spec_text(
                    "[parameters]\n\
                     optimizer = { distribution = \"log_uniform\", min = 1, max = 2 }",
                ),
                "invalid parameters.optimizer.distribution: \"log_uniform\" is only for float \
                 hyperparameters and \"optimizer\" is a string, so use values = [...]",
            ),
            (
                "int bound float",
                spec_text(
                    "[parameters]\nbatch_size = { distribution = \"int\", min = 16.0, max = 64 }",
                ),
                "invalid parameters.batch_size.min: expected an int, got 16.0 (float)",
            ),
            (
                "int step zero",
                spec_text(
                    "[parameters]\n\
                     batch_size = { distribution = \"int\", min = 16, max = 64, step = 0 }",
                ),
                "invalid parameters.batch_size.step: expected an int >= 1, got 0",
            ),
            (
                "int min above max",
                spec_text(
                    "[parameters]\nbatch_size = { distribution = \"int\", min = 128, max = 16 }",
                ),
                "invalid parameters.batch_size: expected min <= max, got min = 128 and max = 16",
            ),
            (
                "int bound outside schema",
                spec_text("[parameters]\n\
                 batch_size = { distribution = \"int\", min = 0, max = 16 }"),
                "parameters.batch_size.min: invalid hyperparameter \"batch_size\": expected an \
                 int from 1 to 65536, got 0 (int)",
            ),
            (
                "grid over continuous",
                spec_text(
                    "[search]\nmethod = \"grid\"\n[parameters]\n\
                     lr = { distribution = \"log_uniform\", min = 1e-4, max = 1e-1 }",
                ),
                "invalid parameters.lr: grid search needs a finite domain, but \"lr\" has a \
                 log_uniform distribution, so list its points with values = [...] or set \
                 search.method = \"random\"",
            ),
            (
                "fixed hyperparameters not a table",
                spec_text("hyperparameters = 5"),
                "invalid task.hyperparameters: expected a table, got 5 (int)",
            ),
            (
                "fixed unknown hyperparameter",
                spec_text("[task.hyperparameters]\nchannels = 8"),
                "task.hyperparameters.channels: unknown hyperparameter \"channels\" for model \
                 \"mlp\": expected one of lr, batch_size, optimizer, momentum, weight_decay, \
                 dropout, hidden_size, hidden_layers, freeze_backbone, unfreeze_epoch, backbone_lr_factor, lr_schedule, warmup_epochs, \
                 step_size, gamma, label_smoothing, grad_clip_norm, patience, precision, augment, \
                 crop_padding",
            ),
            (
                "fixed value outside schema",
                spec_text("[task.hyperparameters]\nmomentum = 1.0"),
                "task.hyperparameters.momentum: invalid hyperparameter \"momentum\": expected a \
                 float >= 0 and < 1 (read by sgd only), got 1.0 (float)",
            ),
            (
                "fixed value array",
                spec_text("[task.hyperparameters]\nlr = [0.1]"),
                "invalid task.hyperparameters.lr: expected an int, float, string or bool, got an \
                 array",
            ),
            (
                "fixed and searched",
                spec_text("[task.hyperparameters]\nlr = 0.1\n[parameters]\nlr = [0.01, 0.1]"),
                "invalid task.hyperparameters.lr: \"lr\" is also a search parameter in \
                 [parameters], so remove it from one of the two",
            ),
            (
                "ensemble size zero",
                spec_text("[ensemble]\nsize = 0"),
                "invalid ensemble.size: expected an int from 1 to 1000, got 0",
            ),
            (
                "init_size above size",
                spec_text("[ensemble]\ninit_size = 11"),
                "invalid ensemble.init_size: expected an int from 1 to ensemble.size (10), got 11",
            ),
            (
                "init_size float",
                spec_text("[ensemble]\nsize = 4\ninit_size = 2.0"),
                "invalid ensemble.init_size: expected an int from 1 to ensemble.size (4), got \
                 2.0 (float)",
            ),
            (
                "unknown selection metric",
                spec_text("[ensemble]\nmetric = \"auc\""),
                "invalid ensemble.metric: expected one of \"accuracy\", \"loss\", \"macro_f1\", got \
                 \"auc\"",
            ),
            (
                "unknown ensemble key",
                spec_text("[ensemble]\nsizes = 3"),
                "unknown key ensemble.sizes: expected one of size, init_size, metric",
            ),
            (
                "weights of wrong length",
                spec_text("[parameters]\noptimizer = { values = [\"sgd\", \"adam\"], weights = [1.0] }"),
                "invalid parameters.optimizer.weights: expected an array of 2 numbers > 0, one \
                 per value, got 1 number",
            ),
            (
                "weight zero",
                spec_text(
                    "[parameters]\noptimizer = { values = [\"sgd\", \"adam\"], weights = [1.0, 0] }",
                ),
                "invalid parameters.optimizer.weights[1]: expected a number > 0, got 0.0",
            ),
            (
                "weights not summing to one",
                spec_text(
                    "[parameters]\n\
                     optimizer = { values = [\"sgd\", \"adam\"], weights = [0.5, 0.4] }",
                ),
                "invalid parameters.optimizer.weights: expected numbers that sum to 1 within \
                 1e-6, got a sum of 0.9",
            ),
            (
                "constant outside schema",
                spec_text("[parameters]\ndropout = { value = 1.5 }"),
                "parameters.dropout.value: invalid hyperparameter \"dropout\": expected a float \
                 >= 0 and < 1, got 1.5 (float)",
            ),
            (
                "value and values",
                spec_text("[parameters]\nlr = { value = 0.1, values = [0.1] }"),
                "invalid parameters.lr: expected one of values, value or distribution, got both \
                 values and value",
            ),
            (
                "q without multiple in range",
                spec_text(
                    "[parameters]\ndropout = { distribution = \"uniform\", min = 0.1, max = 0.2, \
                     q = 0.5 }",
                ),
                "invalid parameters.dropout.q: no multiple of q = 0.5 lies between min = 0.1 and \
                 max = 0.2",
            ),
            (
                "q not positive",
                spec_text(
                    "[parameters]\ndropout = { distribution = \"uniform\", min = 0.1, max = 0.2, \
                     q = -1 }",
                ),
                "invalid parameters.dropout.q: expected a number > 0, got -1.0",
            ),
            (
                "normal without sigma",
                spec_text("[parameters]\ndropout = { distribution = \"normal\", mu = 0.2 }"),
                "missing parameters.dropout.sigma: expected a number > 0",
            ),
            (
                "normal sigma zero",
                spec_text(
                    "[parameters]\ndropout = { distribution = \"normal\", mu = 0.2, sigma = 0 }",
                ),
                "invalid parameters.dropout.sigma: expected a number > 0, got 0.0",
            ),
            (
                "normal on int",
                spec_text(
                    "[parameters]\nbatch_size = { distribution = \"normal\", mu = 32, sigma = 4 }",
                ),
                "invalid parameters.batch_size.distribution: \"normal\" is only for float \
                 hyperparameters and \"batch_size\" is an int, so use distribution = \"int\" or \
                 values = [...]",
            ),
            (
                "log int below one",
                spec_text(
                    "[parameters]\n\
                     hidden_layers = { distribution = \"int\", min = 0, max = 8, log = true }",
                ),
                "invalid parameters.hidden_layers.min: expected an int >= 1 with log = true, got 0",
            ),
            (
                "log int with step",
                spec_text(
                    "[parameters]\nhidden_size = { distribution = \"int\", min = 8, max = 512, \
                     step = 8, log = true }",
                ),
                "invalid parameters.hidden_size.step: expected 1 or no step with log = true, got 8",
            ),
            (
                "condition on unknown parameter",
                spec_text(
                    "[parameters]\nmomentum = { distribution = \"uniform\", min = 0.5, max = 0.9, \
                     when = { optimizer = [\"sgd\"] } }",
                ),
                "invalid parameters.momentum.when.optimizer: \"optimizer\" is not a search \
                 parameter in [parameters]",
            ),
            (
                "condition on later parameter",
                spec_text(
                    "[parameters]\nmomentum = { distribution = \"uniform\", min = 0.5, max = 0.9, \
                     when = { optimizer = [\"sgd\"] } }\noptimizer = [\"sgd\", \"adam\"]",
                ),
                "invalid parameters.momentum.when.optimizer: \"optimizer\" is declared after \
                 \"momentum\", but a condition may only name an earlier parameter",
            ),
            (
                "condition on itself",
                spec_text(
                    "[parameters]\noptimizer = { values = [\"sgd\", \"adam\"], \
                     when = { optimizer = [\"sgd\"] } }",
                ),
                "invalid parameters.optimizer.when.optimizer: \"optimizer\" cannot depend on itself",
            ),
            (
                "condition value never taken",
                spec_text(
                    "[parameters]\noptimizer = [\"sgd\", \"adam\"]\n\
                     momentum = { distribution = \"uniform\", min = 0.5, max = 0.9, \
                     when = { optimizer = [\"adamw\"] } }",
                ),
                "invalid parameters.momentum.when.optimizer[0]: \"optimizer\" never takes \
                 \"adamw\", so the condition can never hold",
            ),
            (
                "condition on continuous parameter",
                spec_text(
                    "[parameters]\nlr = { distribution = \"log_uniform\", min = 1e-4, max = 1e-1 }\n\
                     momentum = { distribution = \"uniform\", min = 0.5, max = 0.9, \
                     when = { lr = [0.01] } }",
                ),
                "invalid parameters.momentum.when.lr: \"lr\" has a continuous distribution, but a \
                 condition needs a parameter with listed values or an int distribution",
            ),
            (
                "empty condition",
                spec_text(
                    "[parameters]\nmomentum = { distribution = \"uniform\", min = 0.5, max = 0.9, \
                     when = {} }",
                ),
                "invalid parameters.momentum.when: expected at least one condition, got an empty \
                 table",
            ),
            (
                "grid over conditional",
                spec_text(
                    "[search]\nmethod = \"grid\"\n[parameters]\noptimizer = [\"sgd\", \"adam\"]\n\
                     momentum = { values = [0.5, 0.9], when = { optimizer = [\"sgd\"] } }",
                ),
                "invalid parameters.momentum.when: grid search does not support conditional \
                 parameters, so set search.method = \"random\", \"sobol\" or \"tpe\"",
            ),
            (
                "tpe options for random",
                spec_text("[search]\nmethod = \"random\"\n[search.tpe]\nn_startup_trials = 3"),
                "invalid search.tpe: only search.method = \"tpe\" reads it",
            ),
            (
                "tpe gamma above one",
                spec_text("[search]\nmethod = \"tpe\"\n[search.tpe]\ngamma = 1.5"),
                "invalid search.tpe.gamma: expected a number > 0 and <= 1, got 1.5",
            ),
            (
                "tpe unknown key",
                spec_text("[search]\nmethod = \"tpe\"\n[search.tpe]\ncandidates = 3"),
                "unknown key search.tpe.candidates: expected one of n_startup_trials, \
                 n_ei_candidates, gamma, prior_weight, multivariate",
            ),
            (
                "sobol beyond its sequence",
                spec_text("[search]\nmethod = \"sobol\"\nmax_trials = 70000"),
                "invalid search.max_trials: expected an int from 1 to 65536, got 70000",
            ),
        ];
        cases
            .into_iter()
            .map(|(label, text, expected)| (label, text, expected.to_string()))
            .collect()
    }

    #[test]
    fn spec_rejects_invalid_cases() {
        for (label, text, expected) in invalid_cases() {
            assert_eq!(parse_err(&text), expected, "case {label:?}");
        }
    }

    #[test]
    fn spec_reports_toml_syntax_position() {
        let message = parse_err("name = \"t\"\n[objective\n");
        assert!(message.starts_with("invalid spec TOML: "), "{message}");
        assert!(message.contains("line 2"), "{message}");
        assert!(!message.contains("TOML ints range"), "{message}");
    }

    #[test]
    fn spec_reports_int_beyond_i64() {
        for seed in [
            "18446744073709551615",
            "99999999999999999999",
            "-9223372036854775809",
        ] {
            let message = parse_err(&spec_text(&format!("[search]\nseed = {seed}")));
            assert!(message.starts_with("invalid spec TOML: "), "{message}");
            assert!(message.contains("line 8"), "{message}");
            let range = "TOML ints range from -9223372036854775808 to 9223372036854775807";
            assert!(message.ends_with(range), "{message}");
        }
    }

    #[test]
    fn spec_fills_defaults() {
        let spec = parse_ok(&spec_text(""));
        assert_eq!(spec.name, "t");
        assert_eq!(spec.objective.goal, Goal::Maximize);
        assert_eq!(
            spec.search,
            SearchSpec {
                method: Method::Random,
                max_trials: 10,
                max_concurrent: None,
                max_failed: None,
                seed: 0,
                tpe: TpeSpec::default(),
            }
        );
        assert!(spec.parameters.is_empty());
        assert_eq!(spec.task.dataset, Path::new("/specs/d.npz"));
        assert_eq!(spec.task.epochs, 10);
        assert!(spec.task.hyperparameters.is_empty());
        assert_eq!(
            spec.ensemble,
            EnsembleSpec {
                size: 10,
                init_size: 1,
                metric: SelectionMetric::Accuracy,
            }
        );
    }

    #[test]
    fn spec_defaults_follow_loss_metric() {
        let text = "name = \"t\"\n[objective]\nmetric = \"val_loss\"\n\
                    [task]\nmodel = \"cnn\"\ndataset = \"d.npz\"\n";
        let spec = parse_ok(text);
        assert_eq!(spec.objective.goal, Goal::Minimize);
        assert_eq!(spec.ensemble.metric, SelectionMetric::Loss);
    }

    #[test]
    fn spec_keeps_explicit_settings() {
        let spec = parse_ok(&spec_text(
            "epochs = 3\n[search]\nmethod = \"random\"\nmax_trials = 12\nmax_concurrent = 2\n\
             max_failed = 0\nseed = 7\n[ensemble]\nsize = 5\ninit_size = 5\nmetric = \"loss\"",
        ));
        assert_eq!(spec.task.epochs, 3);
        assert_eq!(spec.search.max_trials, 12);
        assert_eq!(spec.search.max_concurrent, Some(2));
        assert_eq!(spec.search.max_failed, Some(0));
        assert_eq!(spec.search.seed, 7);
        assert_eq!(spec.ensemble.init_size, 5);
        assert_eq!(spec.ensemble.metric, SelectionMetric::Loss);
    }

    #[test]
    fn spec_reads_image_keys() {
        let spec = parse_ok(&spec_text(
            "format = \"imagefolder\"\nimage_size = 224\n\
             normalize_mean = [0.485, 0.456, 0.406]\nnormalize_std = [0.229, 0.224, 1]",
        ));
        assert_eq!(spec.task.format.as_deref(), Some("imagefolder"));
        assert_eq!(spec.task.image_size, 224);
        let expected = Normalize {
            mean: vec![0.485, 0.456, 0.406],
            std: vec![0.229, 0.224, 1.0],
        };
        assert_eq!(spec.task.normalize, Some(expected));
    }

    #[test]
    fn spec_image_keys_default() {
        let spec = parse_ok(&spec_text(""));
        assert_eq!(spec.task.image_size, 32);
        assert_eq!(spec.task.normalize, None);
    }

    #[test]
    fn spec_keeps_absolute_dataset() {
        let text = spec_text("").replace("\"d.npz\"", "\"/data/d.npz\"");
        assert_eq!(parse_ok(&text).task.dataset, Path::new("/data/d.npz"));
    }

    #[test]
    fn spec_parses_every_parameter_form_in_order() {
        let spec = parse_ok(&spec_text(
            "[parameters]\n\
             optimizer = [\"sgd\", \"adam\"]\n\
             hidden_size = { values = [64, 128, 256] }\n\
             lr = { distribution = \"log_uniform\", min = 1e-4, max = 1e-1 }\n\
             dropout = { distribution = \"uniform\", min = 0, max = 0.5 }\n\
             batch_size = { distribution = \"int\", min = 16, max = 128, step = 16 }\n\
             hidden_layers = { distribution = \"int\", min = 1, max = 3 }\n\
             weight_decay = [0, 1e-4]",
        ));
        let expected = [
            (
                "optimizer",
                Domain::Values(vec![
                    Value::String("sgd".into()),
                    Value::String("adam".into()),
                ]),
            ),
            (
                "hidden_size",
                Domain::Values(vec![Value::Int(64), Value::Int(128), Value::Int(256)]),
            ),
            (
                "lr",
                Domain::LogUniform {
                    min: 1e-4,
                    max: 1e-1,
                    q: None,
                },
            ),
            (
                "dropout",
                Domain::Uniform {
                    min: 0.0,
                    max: 0.5,
                    q: None,
                },
            ),
            (
                "batch_size",
                Domain::Int {
                    min: 16,
                    max: 128,
                    step: 16,
                },
            ),
            (
                "hidden_layers",
                Domain::Int {
                    min: 1,
                    max: 3,
                    step: 1,
                },
            ),
            (
                "weight_decay",
                Domain::Values(vec![Value::Int(0), Value::Float(1e-4)]),
            ),
        ];
        assert_eq!(spec.parameters.len(), expected.len());
        for (parameter, (name, domain)) in spec.parameters.iter().zip(expected) {
            assert_eq!(parameter.name, name);
            assert_eq!(parameter.domain, domain, "parameter {name}");
        }
    }

    #[test]
    fn spec_parses_new_parameter_forms() {
        let spec = parse_ok(&spec_text(
            "[search]\nmethod = \"tpe\"\n[search.tpe]\nn_startup_trials = 5\ngamma = 0.2\n\
             [parameters]\n\
             optimizer = { values = [\"sgd\", \"adam\"], weights = [0.25, 0.75] }\n\
             momentum = { distribution = \"uniform\", min = 0.5, max = 0.99, \
             when = { optimizer = \"sgd\" } }\n\
             hidden_layers = { value = 2 }\n\
             dropout = { distribution = \"uniform\", min = 0, max = 0.5, q = 0.05 }\n\
             weight_decay = { distribution = \"normal\", mu = 0.01, sigma = 0.02 }\n\
             lr = { distribution = \"log_normal\", mu = -7, sigma = 1.5, max = 0.1 }\n\
             hidden_size = { distribution = \"int\", min = 16, max = 1024, log = true }",
        ));
        let text = |s: &str| Value::String(s.to_string());
        let expected = [
            (
                "optimizer",
                Domain::Weighted {
                    values: vec![text("sgd"), text("adam")],
                    weights: vec![0.25, 0.75],
                },
            ),
            (
                "momentum",
                Domain::Uniform {
                    min: 0.5,
                    max: 0.99,
                    q: None,
                },
            ),
            ("hidden_layers", Domain::Constant(Value::Int(2))),
            (
                "dropout",
                Domain::Uniform {
                    min: 0.0,
                    max: 0.5,
                    q: Some(0.05),
                },
            ),
            (
                "weight_decay",
                Domain::Normal {
                    mu: 0.01,
                    sigma: 0.02,
                    min: 0.0,
                    max: 1.0,
                    q: None,
                },
            ),
            (
                "lr",
                Domain::LogNormal {
                    mu: -7.0,
                    sigma: 1.5,
                    min: f64::MIN_POSITIVE,
                    max: 0.1,
                    q: None,
                },
            ),
            ("hidden_size", Domain::LogInt { min: 16, max: 1024 }),
        ];
        assert_eq!(spec.parameters.len(), expected.len());
        for (parameter, (name, domain)) in spec.parameters.iter().zip(expected) {
            assert_eq!(parameter.name, name);
            assert_eq!(parameter.domain, domain, "parameter {name}");
        }
        let momentum = &spec.parameters[1];
        assert_eq!(
            momentum.when,
            [Condition {
                parent: "optimizer".to_string(),
                values: vec![text("sgd")],
            }]
        );
        assert_eq!(spec.search.method, Method::Tpe);
        assert_eq!(spec.search.tpe.n_startup_trials, 5);
        assert_eq!(spec.search.tpe.gamma, Some(0.2));
        assert_eq!(spec.search.tpe.n_ei_candidates, 48);
    }

    #[test]
    fn condition_value_takes_parent_type() {
        let spec = parse_ok(&spec_text(
            "[parameters]\nweight_decay = [0, 1e-4]\n\
             dropout = { values = [0.1, 0.2], when = { weight_decay = [0.0] } }",
        ));
        assert_eq!(spec.parameters[1].when[0].values, [Value::Int(0)]);
    }

    #[test]
    fn spec_keeps_fixed_hyperparameters_in_order() {
        let spec = parse_ok(&spec_text(
            "[task.hyperparameters]\nmomentum = 0.9\nbatch_size = 32\noptimizer = \"sgd\"",
        ));
        let expected = vec![
            ("momentum".to_string(), Value::Float(0.9)),
            ("batch_size".to_string(), Value::Int(32)),
            ("optimizer".to_string(), Value::String("sgd".into())),
        ];
        assert_eq!(spec.task.hyperparameters, expected);
    }

    #[test]
    fn grid_max_trials_defaults_to_grid_size() {
        let spec = parse_ok(&spec_text(
            "[search]\nmethod = \"grid\"\n[parameters]\nlr = [0.01, 0.1]\n\
             batch_size = { distribution = \"int\", min = 16, max = 64, step = 16 }",
        ));
        assert_eq!(spec.search.max_trials, 8);
    }

    #[test]
    fn grid_max_trials_default_is_capped() {
        let spec = parse_ok(&spec_text(
            "[search]\nmethod = \"grid\"\n[parameters]\n\
             hidden_size = { distribution = \"int\", min = 1, max = 65536 }\n\
             hidden_layers = { distribution = \"int\", min = 0, max = 16 }",
        ));
        assert_eq!(spec.search.max_trials, MAX_TRIALS);
    }

    #[test]
    fn values_list_is_capped() {
        let num_values = parameters::MAX_VALUES_PER_PARAMETER + 1;
        let values: Vec<String> = (1..=num_values).map(|i| i.to_string()).collect();
        let err = parse_err(&spec_text(&format!(
            "[parameters]\nhidden_size = [{}]",
            values.join(", ")
        )));
        assert_eq!(
            err,
            format!("invalid parameters.hidden_size: expected at most 10000 values, got {num_values} values")
        );
    }

    #[test]
    fn max_trials_is_capped() {
        let err = parse_err(&spec_text("[search]\nmax_trials = 100001"));
        assert!(err.contains("100001"), "{err}");
        assert!(err.contains("100000"), "{err}");
    }

    #[test]
    fn grid_without_parameters_has_one_trial() {
        let spec = parse_ok(&spec_text("[search]\nmethod = \"grid\""));
        assert_eq!(spec.search.max_trials, 1);
    }

    #[test]
    fn example_specs_parse() {
        let examples = [
            ("digits.toml", include_str!("../../examples/digits.toml")),
            ("quick.toml", include_str!("../../examples/quick.toml")),
            (
                "digits-grid.toml",
                include_str!("../../examples/digits-grid.toml"),
            ),
            (
                "digits-asha.toml",
                include_str!("../../examples/digits-asha.toml"),
            ),
        ];
        for (file, text) in examples {
            let parsed = SweepSpec::parse(text, Path::new("examples"));
            assert!(parsed.is_ok(), "{file}: {parsed:?}");
        }
    }

    #[test]
    fn docs_example_parses() {
        let docs = include_str!("../../docs/spec.md");
        let start = docs
            .find("```toml\n")
            .expect("docs/spec.md has a TOML example")
            + 8;
        let length = docs[start..]
            .find("```")
            .expect("the example block is closed");
        let parsed = SweepSpec::parse(&docs[start..start + length], Path::new("docs"));
        assert!(parsed.is_ok(), "{parsed:?}");
    }

    #[test]
    fn quick_example_is_small_grid() {
        let text = include_str!("../../examples/quick.toml");
        let spec = SweepSpec::parse(text, Path::new("examples")).unwrap();
        assert_eq!(spec.search.method, Method::Grid);
        assert_eq!(spec.search.max_trials, 4);
        assert_eq!(spec.task.epochs, 2);
        assert_eq!(spec.task.dataset, Path::new("examples/data/digits.npz"));
    }
}
