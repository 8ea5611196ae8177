//! W&B sweep configurations (YAML) read as tunefleet specs.
//!
//! The YAML is converted into the TOML tree of a native spec, and `SweepSpec::parse` then
//! validates that tree like any other spec, so every rule and message lives in one place.
//! `docs/spec.md` has the mapping table. Keys that tunefleet cannot honour are rejected by
//! name instead of being ignored.

use serde_norway::Value as Yaml;
use toml::{Table, Value as Toml};

use super::section::unknown_key;
use super::SpecError;

const TOP_KEYS: &[&str] = &[
    "name",
    "description",
    "method",
    "metric",
    "parameters",
    "run_cap",
    "early_terminate",
    "task",
    "ensemble",
    "search",
];
const METRIC_KEYS: &[&str] = &["name", "goal"];
const PARAMETER_KEYS: &[&str] = &[
    "value",
    "values",
    "probabilities",
    "distribution",
    "min",
    "max",
    "q",
    "mu",
    "sigma",
    "parameters",
    "when",
];
const EARLY_TERMINATE_KEYS: &[&str] = &["type", "min_iter", "max_iter", "eta", "s"];
const METHODS: &[(&str, &str)] = &[
    ("grid", "grid"),
    ("random", "random"),
    ("bayes", "tpe"),
    ("tpe", "tpe"),
    ("sobol", "sobol"),
];
/// W&B distributions and the native distribution each maps onto.
const DISTRIBUTIONS: &[&str] = &[
    "constant",
    "categorical",
    "categorical_w_probabilities",
    "int_uniform",
    "uniform",
    "q_uniform",
    "log_uniform",
    "log_uniform_values",
    "q_log_uniform",
    "q_log_uniform_values",
    "normal",
    "q_normal",
    "log_normal",
    "q_log_normal",
];

/// Converts a W&B sweep configuration into the text of a native TOML spec.
pub fn wandb_to_toml(yaml_text: &str) -> Result<String, SpecError> {
    let table = wandb_to_table(yaml_text)?;
    toml::to_string(&table)
        .map_err(|err| SpecError(format!("failed to write the converted spec as TOML: {err}")))
}

/// Converts a W&B sweep configuration into the TOML tree of a native spec.
pub fn wandb_to_table(yaml_text: &str) -> Result<Table, SpecError> {
    let yaml: Yaml = serde_norway::from_str(yaml_text)
        .map_err(|err| SpecError(format!("invalid spec YAML: {err}")))?;
    let Yaml::Mapping(root) = yaml else {
        return Err(SpecError(format!(
            "invalid spec YAML: expected a mapping at the top, got {}",
            describe(&yaml)
        )));
    };
    let root = mapping("", &root)?;
    for (key, _) in &root {
        check_top_key(key)?;
    }

    let mut spec = Table::new();
    for key in ["name", "description"] {
        if let Some(value) = get(&root, key) {
            spec.insert(key.to_string(), to_toml(key, value)?);
        }
    }
    if let Some(metric) = get(&root, "metric") {
        spec.insert(
            "objective".to_string(),
            Toml::Table(convert_metric(metric)?),
        );
    }
    spec.insert("search".to_string(), Toml::Table(convert_search(&root)?));
    if let Some(parameters) = get(&root, "parameters") {
        let mut converted = Table::new();
        convert_parameters("parameters", parameters, &mut converted)?;
        spec.insert("parameters".to_string(), Toml::Table(converted));
    }
    for key in ["task", "ensemble"] {
        if let Some(value) = get(&root, key) {
            spec.insert(key.to_string(), to_toml(key, value)?);
        }
    }
    if let Some(early_terminate) = get(&root, "early_terminate") {
        let converted = convert_early_terminate(early_terminate)?;
        spec.insert("early_stopping".to_string(), Toml::Table(converted));
    }
    Ok(spec)
}

fn check_top_key(key: &str) -> Result<(), SpecError> {
    match key {
        "program" | "command" => Err(SpecError(format!(
            "unsupported key {key}: trials run tunefleet's built-in trainer, so describe the \
             training in task (model, dataset, epochs, hyperparameters) instead"
        ))),
        "project" | "entity" => Err(SpecError(format!(
            "unsupported key {key}: tunefleet does not log to W&B, so remove it"
        ))),
        _ if TOP_KEYS.contains(&key) => Ok(()),
        _ => Err(unknown_key(key, TOP_KEYS)),
    }
}

/// Reads a YAML mapping whose keys are strings, in document order.
fn mapping<'a>(
    path: &str,
    raw: &'a serde_norway::Mapping,
) -> Result<Vec<(String, &'a Yaml)>, SpecError> {
    raw.iter()
        .map(|(key, value)| match key {
            Yaml::String(key) => Ok((key.clone(), value)),
            other => Err(SpecError(format!(
                "invalid {}: expected string keys, got {}",
                if path.is_empty() { "spec YAML" } else { path },
                describe(other)
            ))),
        })
        .collect()
}

fn get<'a>(entries: &[(String, &'a Yaml)], key: &str) -> Option<&'a Yaml> {
    entries.iter().find(|(k, _)| k == key).map(|(_, v)| *v)
}

fn sub_mapping<'a>(path: &str, raw: &'a Yaml) -> Result<Vec<(String, &'a Yaml)>, SpecError> {
    match raw {
        Yaml::Mapping(entries) => mapping(path, entries),
        other => Err(SpecError(format!(
            "invalid {path}: expected a mapping, got {}",
            describe(other)
        ))),
    }
}

fn check_keys(path: &str, entries: &[(String, &Yaml)], allowed: &[&str]) -> Result<(), SpecError> {
    match entries
        .iter()
        .find(|(key, _)| !allowed.contains(&key.as_str()))
    {
        Some((key, _)) => Err(unknown_key(&format!("{path}.{key}"), allowed)),
        None => Ok(()),
    }
}

fn convert_metric(raw: &Yaml) -> Result<Table, SpecError> {
    let entries = sub_mapping("metric", raw)?;
    if get(&entries, "target").is_some() {
        return Err(SpecError(
            "unsupported key metric.target: a sweep runs until max_trials (run_cap), so remove it"
                .to_string(),
        ));
    }
    check_keys("metric", &entries, METRIC_KEYS)?;
    let mut objective = Table::new();
    if let Some(name) = get(&entries, "name") {
        objective.insert("metric".to_string(), to_toml("metric.name", name)?);
    }
    if let Some(goal) = get(&entries, "goal") {
        objective.insert("goal".to_string(), to_toml("metric.goal", goal)?);
    }
    Ok(objective)
}

/// Builds `[search]` from `method`, `run_cap` and the tunefleet-specific `search` mapping.
fn convert_search(root: &[(String, &Yaml)]) -> Result<Table, SpecError> {
    let mut search = Table::new();
    if let Some(raw) = get(root, "search") {
        for (key, value) in sub_mapping("search", raw)? {
            let converted = to_toml(&format!("search.{key}"), value)?;
            search.insert(key, converted);
        }
    }
    for (key, replacement) in [("method", "method"), ("max_trials", "run_cap")] {
        if search.contains_key(key) {
            return Err(SpecError(format!(
                "invalid search.{key}: set it with the top-level key {replacement} instead"
            )));
        }
    }
    if let Some(method) = get(root, "method") {
        let Yaml::String(method) = method else {
            return Err(invalid_choice("method", &describe(method)));
        };
        let Some((_, native)) = METHODS.iter().find(|(name, _)| name == method) else {
            return Err(invalid_choice("method", &format!("{method:?}")));
        };
        search.insert("method".to_string(), Toml::String(native.to_string()));
    }
    if let Some(run_cap) = get(root, "run_cap") {
        search.insert("max_trials".to_string(), to_toml("run_cap", run_cap)?);
    }
    Ok(search)
}

fn invalid_choice(path: &str, got: &str) -> SpecError {
    let names: Vec<String> = METHODS
        .iter()
        .map(|(name, _)| format!("{name:?}"))
        .collect();
    SpecError(format!(
        "invalid {path}: expected one of {}, got {got}",
        names.join(", ")
    ))
}

/// Converts each parameter. A parameter with nested `parameters` is flattened: each nested
/// parameter becomes a top-level one under its own name, because the trainer's hyperparameters
/// are flat.
fn convert_parameters(path: &str, raw: &Yaml, out: &mut Table) -> Result<(), SpecError> {
    for (name, definition) in sub_mapping(path, raw)? {
        let parameter_path = format!("{path}.{name}");
        let entries = sub_mapping(&parameter_path, definition)?;
        if let Some(nested) = get(&entries, "parameters") {
            if entries.len() > 1 {
                return Err(SpecError(format!(
                    "invalid {parameter_path}: a parameter with nested parameters takes no \
                     other key"
                )));
            }
            convert_parameters(&format!("{parameter_path}.parameters"), nested, out)?;
            continue;
        }
        if out.contains_key(&name) {
            return Err(SpecError(format!(
                "invalid {parameter_path}: {name:?} is defined twice once nested parameters \
                 are flattened"
            )));
        }
        let converted = convert_parameter(&parameter_path, &entries)?;
        out.insert(name, Toml::Table(converted));
    }
    Ok(())
}

fn convert_parameter(path: &str, entries: &[(String, &Yaml)]) -> Result<Table, SpecError> {
    check_keys(path, entries, PARAMETER_KEYS)?;
    let distribution = match get(entries, "distribution") {
        None => infer_distribution(path, entries)?,
        Some(Yaml::String(name)) if DISTRIBUTIONS.contains(&name.as_str()) => name.clone(),
        Some(other) => {
            let got = match other {
                Yaml::String(name) => format!("{name:?}"),
                other => describe(other),
            };
            let names: Vec<String> = DISTRIBUTIONS.iter().map(|d| format!("{d:?}")).collect();
            return Err(SpecError(format!(
                "invalid {path}.distribution: expected one of {}, got {got}",
                names.join(", ")
            )));
        }
    };
    let (native, keys) = native_distribution(&distribution);
    for (key, _) in entries {
        if !keys.contains(&key.as_str()) && key != "distribution" && key != "when" {
            return Err(SpecError(format!(
                "invalid {path}.{key}: distribution {distribution:?} takes only {}",
                keys.join(", ")
            )));
        }
    }

    let mut table = Table::new();
    if let Some(native) = native {
        table.insert("distribution".to_string(), Toml::String(native.to_string()));
    }
    for (key, value) in entries {
        let key_path = format!("{path}.{key}");
        let converted = match key.as_str() {
            "distribution" => continue,
            "min" | "max" if matches!(distribution.as_str(), "log_uniform" | "q_log_uniform") => {
                // W&B's log_uniform and q_log_uniform take natural-log exponents.
                Toml::Float(number(&key_path, value)?.exp())
            }
            _ => to_toml(&key_path, value)?,
        };
        let native_key = match key.as_str() {
            "probabilities" => "weights",
            other => other,
        };
        table.insert(native_key.to_string(), converted);
    }
    for (key, default) in [("mu", 0.0), ("sigma", 1.0)] {
        if keys.contains(&key) && !table.contains_key(key) {
            table.insert(key.to_string(), Toml::Float(default));
        }
    }
    Ok(table)
}

/// Infers the distribution as W&B does when none is given: listed values are categorical, a
/// single value constant, and int bounds `int_uniform`, float bounds `uniform`.
fn infer_distribution(path: &str, entries: &[(String, &Yaml)]) -> Result<String, SpecError> {
    if get(entries, "values").is_some() {
        return Ok(if get(entries, "probabilities").is_some() {
            "categorical_w_probabilities"
        } else {
            "categorical"
        }
        .to_string());
    }
    if get(entries, "value").is_some() {
        return Ok("constant".to_string());
    }
    match (get(entries, "min"), get(entries, "max")) {
        (Some(Yaml::Number(min)), Some(Yaml::Number(max))) if !min.is_f64() && !max.is_f64() => {
            Ok("int_uniform".to_string())
        }
        (Some(_), Some(_)) => Ok("uniform".to_string()),
        _ => Err(SpecError(format!(
            "invalid {path}: expected values, value, min and max, or a distribution"
        ))),
    }
}

/// Returns the native distribution (`None` for listed values and constants) and the W&B keys
/// that the distribution takes.
fn native_distribution(distribution: &str) -> (Option<&'static str>, &'static [&'static str]) {
    match distribution {
        "constant" => (None, &["value"]),
        "categorical" => (None, &["values"]),
        "categorical_w_probabilities" => (None, &["values", "probabilities"]),
        "int_uniform" => (Some("int"), &["min", "max"]),
        "uniform" => (Some("uniform"), &["min", "max"]),
        "q_uniform" => (Some("uniform"), &["min", "max", "q"]),
        "log_uniform" | "log_uniform_values" => (Some("log_uniform"), &["min", "max"]),
        "q_log_uniform" | "q_log_uniform_values" => (Some("log_uniform"), &["min", "max", "q"]),
        "normal" => (Some("normal"), &["mu", "sigma"]),
        "q_normal" => (Some("normal"), &["mu", "sigma", "q"]),
        "log_normal" => (Some("log_normal"), &["mu", "sigma"]),
        "q_log_normal" => (Some("log_normal"), &["mu", "sigma", "q"]),
        _ => unreachable!("the caller checked the distribution against DISTRIBUTIONS"),
    }
}

fn number(path: &str, raw: &Yaml) -> Result<f64, SpecError> {
    match raw {
        Yaml::Number(n) => n
            .as_f64()
            .ok_or_else(|| SpecError(format!("invalid {path}: expected a number, got {n}"))),
        other => Err(SpecError(format!(
            "invalid {path}: expected a number, got {}",
            describe(other)
        ))),
    }
}

/// Maps `early_terminate` onto the native `[early_stopping]` table.
fn convert_early_terminate(raw: &Yaml) -> Result<Table, SpecError> {
    let entries = sub_mapping("early_terminate", raw)?;
    if get(&entries, "strict").is_some() {
        return Err(SpecError(
            "unsupported key early_terminate.strict: tunefleet's hyperband has no strict mode, \
             so remove it"
                .to_string(),
        ));
    }
    check_keys("early_terminate", &entries, EARLY_TERMINATE_KEYS)?;
    match get(&entries, "type") {
        Some(Yaml::String(kind)) if kind == "hyperband" => {}
        Some(other) => {
            let got = match other {
                Yaml::String(kind) => format!("{kind:?}"),
                other => describe(other),
            };
            return Err(SpecError(format!(
                "invalid early_terminate.type: expected \"hyperband\", got {got}"
            )));
        }
        None => {
            return Err(SpecError(
                "missing early_terminate.type: expected \"hyperband\"".to_string(),
            ))
        }
    }
    let mut table = Table::new();
    table.insert("method".to_string(), Toml::String("hyperband".to_string()));
    for (wandb_key, native_key) in [
        ("min_iter", "min_resource"),
        ("max_iter", "max_resource"),
        ("eta", "reduction_factor"),
        ("s", "brackets"),
    ] {
        if let Some(value) = get(&entries, wandb_key) {
            let path = format!("early_terminate.{wandb_key}");
            table.insert(native_key.to_string(), to_toml(&path, value)?);
        }
    }
    Ok(table)
}

/// Converts a YAML value into TOML, keeping ints as ints.
fn to_toml(path: &str, raw: &Yaml) -> Result<Toml, SpecError> {
    Ok(match raw {
        Yaml::Bool(b) => Toml::Boolean(*b),
        Yaml::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) if !n.is_f64() => Toml::Integer(i),
            (_, Some(x)) if n.is_f64() => Toml::Float(x),
            _ => {
                return Err(SpecError(format!(
                    "invalid {path}: {n} is outside the ints from {} to {}",
                    i64::MIN,
                    i64::MAX
                )))
            }
        },
        Yaml::String(s) => Toml::String(s.clone()),
        Yaml::Sequence(items) => Toml::Array(
            items
                .iter()
                .enumerate()
                .map(|(i, item)| to_toml(&format!("{path}[{i}]"), item))
                .collect::<Result<_, _>>()?,
        ),
        Yaml::Mapping(entries) => {
            let mut table = Table::new();
            for (key, value) in mapping(path, entries)? {
                let converted = to_toml(&format!("{path}.{key}"), value)?;
                table.insert(key, converted);
            }
            Toml::Table(table)
        }
        Yaml::Null => {
            return Err(SpecError(format!(
                "invalid {path}: expected a value, got null"
            )))
        }
        Yaml::Tagged(tagged) => {
            return Err(SpecError(format!(
                "invalid {path}: expected a plain value, got the tagged value {}",
                tagged.tag
            )))
        }
    })
}

/// Describes a YAML value with its type.
fn describe(raw: &Yaml) -> String {
    match raw {
        Yaml::Null => "null".to_string(),
        Yaml::Bool(b) => format!("{b} (bool)"),
        Yaml::Number(n) if n.is_f64() => format!("{n} (float)"),
        Yaml::Number(n) => format!("{n} (int)"),
        Yaml::String(s) => format!("{s:?} (string)"),
        Yaml::Sequence(_) => "a sequence".to_string(),
        Yaml::Mapping(_) => "a mapping".to_string(),
        Yaml::Tagged(tagged) => format!("a value tagged {}", tagged.tag),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use tunefleet_proto::Value;

    use super::*;
    use crate::spec::{native_spec_text, Domain, EarlyStoppingSpec, Goal, Method, SweepSpec};

    const TASK: &str = "task:\n  model: mlp\n  dataset: d.npz\n";

    fn convert(yaml: &str) -> SweepSpec {
        let text = wandb_to_toml(yaml).unwrap_or_else(|err| panic!("{err}\n{yaml}"));
        SweepSpec::parse(&text, Path::new("/specs")).unwrap_or_else(|err| panic!("{err}\n{text}"))
    }

    fn convert_err(yaml: &str) -> String {
        let text = match wandb_to_toml(yaml) {
            Ok(text) => text,
            Err(err) => return err.0,
        };
        match SweepSpec::parse(&text, Path::new("/specs")) {
            Ok(spec) => panic!("spec should fail: {spec:?}\n{yaml}"),
            Err(err) => err.0,
        }
    }

    fn domain<'a>(spec: &'a SweepSpec, name: &str) -> &'a Domain {
        let parameter = spec.parameters.iter().find(|p| p.name == name);
        &parameter
            .unwrap_or_else(|| panic!("no parameter {name}"))
            .domain
    }

    #[test]
    fn wandb_maps_top_level_keys() {
        let spec = convert(&format!(
            "name: w\ndescription: a sweep\nmethod: bayes\nrun_cap: 7\n\
             metric:\n  name: val_loss\n  goal: minimize\nsearch:\n  seed: 3\n{TASK}\
             ensemble:\n  size: 4\n"
        ));
        assert_eq!(spec.name, "w");
        assert_eq!(spec.description.as_deref(), Some("a sweep"));
        assert_eq!(spec.search.method, Method::Tpe);
        assert_eq!(spec.search.max_trials, 7);
        assert_eq!(spec.search.seed, 3);
        assert_eq!(spec.objective.metric, "val_loss");
        assert_eq!(spec.objective.goal, Goal::Minimize);
        assert_eq!(spec.ensemble.size, 4);
        assert_eq!(spec.task.dataset, Path::new("/specs/d.npz"));
    }

    #[test]
    fn wandb_maps_distributions() {
        let spec = convert(&format!(
            "name: w\nmethod: random\nmetric:\n  name: val_accuracy\n{TASK}parameters:\n\
             \x20 optimizer:\n    values: [sgd, adam]\n    probabilities: [0.2, 0.8]\n\
             \x20 momentum:\n    value: 0.9\n\
             \x20 batch_size:\n    min: 16\n    max: 64\n\
             \x20 dropout:\n    distribution: q_uniform\n    min: 0.0\n    max: 0.5\n    q: 0.1\n\
             \x20 lr:\n    distribution: log_uniform\n    min: -9.0\n    max: -2.0\n\
             \x20 weight_decay:\n    distribution: normal\n    mu: 0.01\n    sigma: 0.005\n\
             \x20 hidden_size:\n    distribution: int_uniform\n    min: 32\n    max: 256\n"
        ));
        let text = |s: &str| Value::String(s.to_string());
        assert_eq!(
            domain(&spec, "optimizer"),
            &Domain::Weighted {
                values: vec![text("sgd"), text("adam")],
                weights: vec![0.2, 0.8],
            }
        );
        assert_eq!(
            domain(&spec, "momentum"),
            &Domain::Constant(Value::Float(0.9))
        );
        assert_eq!(
            domain(&spec, "batch_size"),
            &Domain::Int {
                min: 16,
                max: 64,
                step: 1
            }
        );
        assert_eq!(
            domain(&spec, "dropout"),
            &Domain::Uniform {
                min: 0.0,
                max: 0.5,
                q: Some(0.1)
            }
        );
        // W&B's log_uniform bounds are natural-log exponents.
        assert_eq!(
            domain(&spec, "lr"),
            &Domain::LogUniform {
                min: (-9.0_f64).exp(),
                max: (-2.0_f64).exp(),
                q: None
            }
        );
        assert_eq!(
            domain(&spec, "weight_decay"),
            &Domain::Normal {
                mu: 0.01,
                sigma: 0.005,
                min: 0.0,
                max: 1.0,
                q: None
            }
        );
        assert_eq!(
            domain(&spec, "hidden_size"),
            &Domain::Int {
                min: 32,
                max: 256,
                step: 1
            }
        );
    }

    #[test]
    fn wandb_log_uniform_values_keeps_bounds() {
        let spec = convert(&format!(
            "name: w\nmetric:\n  name: val_accuracy\n{TASK}parameters:\n  lr:\n\
             \x20   distribution: q_log_uniform_values\n    min: 0.001\n    max: 0.1\n    q: 0.001\n"
        ));
        assert_eq!(
            domain(&spec, "lr"),
            &Domain::LogUniform {
                min: 0.001,
                max: 0.1,
                q: Some(0.001)
            }
        );
    }

    #[test]
    fn wandb_flattens_nested_parameters() {
        let spec = convert(&format!(
            "name: w\nmetric:\n  name: val_accuracy\n{TASK}parameters:\n  regularisation:\n\
             \x20   parameters:\n      dropout:\n        values: [0.1, 0.2]\n\
             \x20     weight_decay:\n        values: [0.0, 0.001]\n  lr:\n    values: [0.01]\n"
        ));
        let names: Vec<&str> = spec.parameters.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["dropout", "weight_decay", "lr"]);
    }

    #[test]
    fn wandb_passes_conditions() {
        let spec = convert(&format!(
            "name: w\nmethod: tpe\nmetric:\n  name: val_accuracy\n{TASK}parameters:\n\
             \x20 optimizer:\n    values: [sgd, adam]\n\
             \x20 momentum:\n    min: 0.5\n    max: 0.9\n    when:\n      optimizer: [sgd]\n"
        ));
        assert_eq!(spec.parameters[1].when[0].parent, "optimizer");
    }

    #[test]
    fn wandb_maps_early_terminate() {
        let table = wandb_to_table(
            "name: w\nearly_terminate:\n  type: hyperband\n  min_iter: 2\n  max_iter: 27\n\
             \x20 eta: 3\n  s: 2\n",
        )
        .unwrap();
        let expected: Table = toml::from_str(
            "method = \"hyperband\"\nmin_resource = 2\nmax_resource = 27\n\
             reduction_factor = 3\nbrackets = 2",
        )
        .unwrap();
        assert_eq!(table["early_stopping"], Toml::Table(expected));
    }

    #[test]
    fn wandb_rejects_invalid_cases() {
        let base = format!("name: w\nmetric:\n  name: val_accuracy\n{TASK}");
        let cases = [
            (
                "program: train.py\n".to_string(),
                "unsupported key program: trials run tunefleet's built-in trainer, so describe \
                 the training in task (model, dataset, epochs, hyperparameters) instead",
            ),
            (
                "command: [python]\n".to_string(),
                "unsupported key command: trials run tunefleet's built-in trainer, so describe \
                 the training in task (model, dataset, epochs, hyperparameters) instead",
            ),
            (
                "project: p\n".to_string(),
                "unsupported key project: tunefleet does not log to W&B, so remove it",
            ),
            (
                "controller: {}\n".to_string(),
                "unknown key controller: expected one of name, description, method, metric, \
                 parameters, run_cap, early_terminate, task, ensemble, search",
            ),
            (
                "method: hyperopt\n".to_string(),
                "invalid method: expected one of \"grid\", \"random\", \"bayes\", \"tpe\", \
                 \"sobol\", got \"hyperopt\"",
            ),
            (
                "parameters:\n  lr:\n    distribution: inv_log_uniform\n    min: 1\n    max: 2\n"
                    .to_string(),
                "invalid parameters.lr.distribution: expected one of \"constant\", \
                 \"categorical\", \"categorical_w_probabilities\", \"int_uniform\", \"uniform\", \
                 \"q_uniform\", \"log_uniform\", \"log_uniform_values\", \"q_log_uniform\", \
                 \"q_log_uniform_values\", \"normal\", \"q_normal\", \"log_normal\", \
                 \"q_log_normal\", got \"inv_log_uniform\"",
            ),
            (
                "parameters:\n  lr:\n    distribution: uniform\n    min: 0.1\n    max: 0.2\n    \
                 q: 0.1\n"
                    .to_string(),
                "invalid parameters.lr.q: distribution \"uniform\" takes only min, max",
            ),
            (
                "parameters:\n  lr:\n    value: null\n".to_string(),
                "invalid parameters.lr.value: expected a value, got null",
            ),
            (
                "parameters:\n  lr:\n    step: 2\n".to_string(),
                "unknown key parameters.lr.step: expected one of value, values, probabilities, \
                 distribution, min, max, q, mu, sigma, parameters, when",
            ),
            (
                "metric:\n  name: val_loss\n  target: 0.1\n".to_string(),
                "unsupported key metric.target: a sweep runs until max_trials (run_cap), so \
                 remove it",
            ),
            (
                "early_terminate:\n  type: envelope\n".to_string(),
                "invalid early_terminate.type: expected \"hyperband\", got \"envelope\"",
            ),
            (
                "search:\n  max_trials: 5\n".to_string(),
                "invalid search.max_trials: set it with the top-level key run_cap instead",
            ),
        ];
        for (extra, expected) in cases {
            let yaml = if extra.starts_with("metric:") {
                format!("name: w\n{TASK}{extra}")
            } else {
                format!("{base}{extra}")
            };
            assert_eq!(convert_err(&yaml), expected, "case {extra:?}");
        }
    }

    #[test]
    fn wandb_reports_yaml_syntax() {
        let message = convert_err("name: [w\n");
        assert!(message.starts_with("invalid spec YAML: "), "{message}");
    }

    #[test]
    fn extension_picks_format() {
        let yaml = format!("name: w\nmetric:\n  name: val_accuracy\n{TASK}");
        let converted = native_spec_text(Path::new("a/sweep.yml"), &yaml).unwrap();
        assert!(
            SweepSpec::parse(&converted, Path::new(".")).is_ok(),
            "{converted}"
        );
        let toml_text = "name = \"w\"\n";
        let kept = native_spec_text(Path::new("sweep.toml"), toml_text).unwrap();
        assert_eq!(kept, toml_text);
    }

    #[test]
    fn wandb_example_parses() {
        let text = include_str!("../../../examples/digits-wandb.yaml");
        let converted = wandb_to_toml(text).unwrap();
        let spec = SweepSpec::parse(&converted, Path::new("examples")).unwrap();
        assert_eq!(spec.search.method, Method::Tpe);
        assert_eq!(spec.search.max_trials, 24);
        assert_eq!(spec.parameters.len(), 7);
        assert_eq!(spec.task.dataset, Path::new("examples/data/digits.npz"));
        let Some(EarlyStoppingSpec::Hyperband(rule)) = spec.early_stopping else {
            panic!("expected hyperband, got {:?}", spec.early_stopping);
        };
        assert_eq!(rule.min_resource, 3);
        assert_eq!(rule.reduction_factor, 3);
        assert_eq!(rule.brackets, 2);
        assert_eq!(rule.max_resource, 30);
    }
}
