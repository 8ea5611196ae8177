//! The search space: `[parameters]` in all its forms, with conditions, checked against the
//! trainer's schema.

use std::collections::HashMap;

use tunefleet_proto::hyper::{self, HyperparameterDef, Kind};
use tunefleet_proto::Value;

use super::section::{describe, invalid, mistyped, schema_error, to_value, unknown_key, Section};
use super::{Condition, Domain, Method, ParameterSpec, SpecError};
use crate::search::same_point;

const VALUES_KEYS: &[&str] = &["values", "weights", "when"];
const CONSTANT_KEYS: &[&str] = &["value", "when"];
const FLOAT_DISTRIBUTION_KEYS: &[&str] = &["distribution", "min", "max", "q", "when"];
const NORMAL_DISTRIBUTION_KEYS: &[&str] =
    &["distribution", "mu", "sigma", "min", "max", "q", "when"];
const INT_DISTRIBUTION_KEYS: &[&str] = &["distribution", "min", "max", "step", "log", "when"];
const DISTRIBUTIONS: &[&str] = &["uniform", "log_uniform", "normal", "log_normal", "int"];
/// How far the sum of `weights` may be from 1.
const WEIGHT_SUM_TOLERANCE: f64 = 1e-6;
/// Maximum values listed for one parameter. A grid runs at most `MAX_TRIALS` trials anyway,
/// and a random search draws from the list, so longer lists only cost memory.
pub(super) const MAX_VALUES_PER_PARAMETER: usize = 10_000;

pub(super) fn parse_parameters(
    section: &Section,
    model: &str,
    method: Method,
) -> Result<Vec<ParameterSpec>, SpecError> {
    let Some(table) = section.table else {
        return Ok(Vec::new());
    };
    let mut parameters: Vec<ParameterSpec> = Vec::with_capacity(table.len());
    for (name, raw) in table {
        let path = section.key_path(name);
        let def = hyper::lookup(model, name).map_err(|err| schema_error(&path, err))?;
        let domain = parse_domain(&path, def, raw)?;
        if method == Method::Grid {
            check_finite(&path, name, &domain)?;
        }
        let when = match raw.get("when") {
            Some(raw_when) => {
                parse_when(&format!("{path}.when"), name, raw_when, table, &parameters)?
            }
            None => Vec::new(),
        };
        if method == Method::Grid && !when.is_empty() {
            return Err(SpecError(format!(
                "invalid {path}.when: grid search does not support conditional parameters, so \
                 set search.method = \"random\", \"sobol\" or \"tpe\""
            )));
        }
        parameters.push(ParameterSpec {
            name: name.clone(),
            domain,
            when,
        });
    }
    Ok(parameters)
}

fn check_finite(path: &str, name: &str, domain: &Domain) -> Result<(), SpecError> {
    let distribution = match domain {
        Domain::Uniform { q: None, .. } => "uniform",
        Domain::Uniform { .. } => "quantized uniform",
        Domain::LogUniform { .. } => "log_uniform",
        Domain::Normal { .. } => "normal",
        Domain::LogNormal { .. } => "log_normal",
        Domain::Values(_)
        | Domain::Weighted { .. }
        | Domain::Constant(_)
        | Domain::Int { .. }
        | Domain::LogInt { .. } => return Ok(()),
    };
    Err(SpecError(format!(
        "invalid {path}: grid search needs a finite domain, but {name:?} has a {distribution} \
         distribution, so list its points with values = [...] or set search.method = \"random\""
    )))
}

/// Reads `when = { parent = [values] }`: each parent must be declared earlier, have a finite
/// domain and be able to take every listed value. Declaring parents first rules out cycles.
fn parse_when(
    path: &str,
    name: &str,
    raw: &toml::Value,
    table: &toml::Table,
    earlier: &[ParameterSpec],
) -> Result<Vec<Condition>, SpecError> {
    let toml::Value::Table(conditions) = raw else {
        return Err(mistyped(path, "a table of parameter = [values]", raw));
    };
    if conditions.is_empty() {
        return Err(invalid(path, "at least one condition", "an empty table"));
    }
    let mut when = Vec::with_capacity(conditions.len());
    for (parent_name, raw_values) in conditions {
        let parent_path = format!("{path}.{parent_name}");
        let parent = find_parent(&parent_path, name, parent_name, table, earlier)?;
        let items = match raw_values {
            toml::Value::Array(items) if items.is_empty() => {
                return Err(invalid(
                    &parent_path,
                    "at least one value",
                    "an empty array",
                ));
            }
            toml::Value::Array(items) => items.as_slice(),
            single => std::slice::from_ref(single),
        };
        let mut values = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let item_path = if matches!(raw_values, toml::Value::Array(_)) {
                format!("{parent_path}[{i}]")
            } else {
                parent_path.clone()
            };
            let value = to_value(&item_path, item)?;
            let Some(member) = domain_member(&parent.domain, &value) else {
                return Err(SpecError(format!(
                    "invalid {item_path}: {parent_name:?} never takes {value}, so the condition \
                     can never hold"
                )));
            };
            values.push(member);
        }
        when.push(Condition {
            parent: parent_name.clone(),
            values,
        });
    }
    Ok(when)
}

fn find_parent<'a>(
    path: &str,
    name: &str,
    parent_name: &str,
    table: &toml::Table,
    earlier: &'a [ParameterSpec],
) -> Result<&'a ParameterSpec, SpecError> {
    if parent_name == name {
        return Err(SpecError(format!(
            "invalid {path}: {name:?} cannot depend on itself"
        )));
    }
    let Some(parent) = earlier.iter().find(|p| p.name == parent_name) else {
        let reason = if table.contains_key(parent_name) {
            format!("{parent_name:?} is declared after {name:?}, but a condition may only name an earlier parameter")
        } else {
            format!("{parent_name:?} is not a search parameter in [parameters]")
        };
        return Err(SpecError(format!("invalid {path}: {reason}")));
    };
    if !matches!(
        parent.domain,
        Domain::Values(_)
            | Domain::Weighted { .. }
            | Domain::Constant(_)
            | Domain::Int { .. }
            | Domain::LogInt { .. }
    ) {
        return Err(SpecError(format!(
            "invalid {path}: {parent_name:?} has a continuous distribution, but a condition \
             needs a parameter with listed values or an int distribution"
        )));
    }
    Ok(parent)
}

/// Returns the domain's own copy of `value` if the domain can produce it, so that `1` matches
/// a listed `1.0` of a float parameter.
fn domain_member(domain: &Domain, value: &Value) -> Option<Value> {
    let listed = |values: &[Value]| values.iter().find(|v| same_point(v, value)).cloned();
    match domain {
        Domain::Values(values) | Domain::Weighted { values, .. } => listed(values),
        Domain::Constant(constant) => listed(std::slice::from_ref(constant)),
        Domain::Int { min, max, step } => match value {
            Value::Int(i) if (min..=max).contains(&i) && (i - min) % step == 0 => {
                Some(Value::Int(*i))
            }
            _ => None,
        },
        Domain::LogInt { min, max } => match value {
            Value::Int(i) if (min..=max).contains(&i) => Some(Value::Int(*i)),
            _ => None,
        },
        _ => None,
    }
}

/// Reads one parameter in any of its forms: a bare array, `{ values = [...] }`,
/// `{ value = x }` or `{ distribution = ..., ... }`.
fn parse_domain(
    path: &str,
    def: &HyperparameterDef,
    raw: &toml::Value,
) -> Result<Domain, SpecError> {
    let expected = "an array of values or a table with a values, value or distribution key";
    let table = match raw {
        toml::Value::Array(items) => return parse_values(path, def, items),
        toml::Value::Table(table) => table,
        other => {
            let got = describe(other);
            return Err(SpecError(format!(
                "invalid {path}: expected {expected}, got {got}, but a fixed value belongs in \
                 [task.hyperparameters] or in {{ value = ... }}"
            )));
        }
    };
    let section = Section {
        path: path.to_string(),
        table: Some(table),
    };
    let forms: Vec<&str> = ["values", "value", "distribution"]
        .into_iter()
        .filter(|key| table.contains_key(*key))
        .collect();
    match forms.as_slice() {
        ["values"] => parse_listed(&section, def),
        ["value"] => {
            section.check_keys(CONSTANT_KEYS)?;
            let value_path = section.key_path("value");
            let value = to_value(&value_path, &table["value"])?;
            hyper::check_value(def, &value).map_err(|err| schema_error(&value_path, err))?;
            Ok(Domain::Constant(value))
        }
        [_] => parse_distribution(&section, def),
        [] => match table.keys().find(|key| *key != "when") {
            Some(key) => Err(unknown_key(
                &section.key_path(key),
                &["values", "value", "distribution"],
            )),
            None if table.is_empty() => Err(invalid(path, expected, "an empty table")),
            None => Err(invalid(path, expected, "a table with only when")),
        },
        [first, second, ..] => Err(SpecError(format!(
            "invalid {path}: expected one of values, value or distribution, got both {first} \
             and {second}"
        ))),
    }
}

/// Reads `{ values = [...] }` with optional `weights`.
fn parse_listed(section: &Section, def: &HyperparameterDef) -> Result<Domain, SpecError> {
    section.check_keys(VALUES_KEYS)?;
    let values_path = section.key_path("values");
    let values = match section.get("values") {
        Some(toml::Value::Array(items)) => parse_values(&values_path, def, items)?,
        Some(other) => return Err(mistyped(&values_path, "an array of values", other)),
        None => unreachable!("the caller found a values key"),
    };
    let Domain::Values(values) = values else {
        unreachable!("parse_values returns listed values");
    };
    match section.get("weights") {
        None => Ok(Domain::Values(values)),
        Some(raw) => {
            let weights = parse_weights(&section.key_path("weights"), raw, values.len())?;
            Ok(Domain::Weighted { values, weights })
        }
    }
}

/// Reads the probabilities of listed values: one number > 0 per value, summing to 1.
fn parse_weights(path: &str, raw: &toml::Value, num_values: usize) -> Result<Vec<f64>, SpecError> {
    let expected = format!("an array of {num_values} numbers > 0, one per value");
    let toml::Value::Array(items) = raw else {
        return Err(mistyped(path, &expected, raw));
    };
    if items.len() != num_values {
        let noun = if items.len() == 1 {
            "number"
        } else {
            "numbers"
        };
        let got = format!("{} {noun}", items.len());
        return Err(invalid(path, &expected, &got));
    }
    let mut weights = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let item_path = format!("{path}[{i}]");
        let weight = match item {
            toml::Value::Integer(w) => *w as f64,
            toml::Value::Float(w) => *w,
            other => return Err(mistyped(&item_path, "a number > 0", other)),
        };
        if !(weight.is_finite() && weight > 0.0) {
            return Err(invalid(&item_path, "a number > 0", &format!("{weight:?}")));
        }
        weights.push(weight);
    }
    let sum: f64 = weights.iter().sum();
    if (sum - 1.0).abs() > WEIGHT_SUM_TOLERANCE {
        return Err(invalid(
            path,
            &format!("numbers that sum to 1 within {WEIGHT_SUM_TOLERANCE:e}"),
            &format!("a sum of {sum:?}"),
        ));
    }
    Ok(weights.iter().map(|w| w / sum).collect())
}

fn parse_values(
    path: &str,
    def: &HyperparameterDef,
    items: &[toml::Value],
) -> Result<Domain, SpecError> {
    if items.is_empty() {
        return Err(invalid(path, "at least one value", "an empty array"));
    }
    if items.len() > MAX_VALUES_PER_PARAMETER {
        return Err(invalid(
            path,
            &format!("at most {MAX_VALUES_PER_PARAMETER} values"),
            &format!("{} values", items.len()),
        ));
    }
    let mut values = Vec::with_capacity(items.len());
    let mut first_index = HashMap::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let item_path = format!("{path}[{i}]");
        let value = to_value(&item_path, item)?;
        hyper::check_value(def, &value).map_err(|err| schema_error(&item_path, err))?;
        if let Some(first) = first_index.insert(PointKey::new(def.kind, &value), i) {
            return Err(SpecError(format!(
                "invalid {item_path}: {value} repeats {path}[{first}], but values must be unique"
            )));
        }
        values.push(value);
    }
    Ok(Domain::Values(values))
}

/// A listed value as the trainer reads it, so `1` and `1.0` count as the same float.
#[derive(PartialEq, Eq, Hash)]
enum PointKey {
    Int(i64),
    /// The bits of the float, with -0.0 stored as 0.0.
    Float(u64),
    String(String),
    Bool(bool),
}

impl PointKey {
    fn new(kind: Kind, value: &Value) -> Self {
        match (kind, value) {
            (Kind::Float, Value::Int(_) | Value::Float(_)) => {
                let x = value.as_f64().unwrap_or_default();
                PointKey::Float(if x == 0.0 { 0.0_f64 } else { x }.to_bits())
            }
            (_, Value::Int(i)) => PointKey::Int(*i),
            (_, Value::Float(x)) => PointKey::Float(x.to_bits()),
            (_, Value::String(s)) => PointKey::String(s.clone()),
            (_, Value::Bool(b)) => PointKey::Bool(*b),
        }
    }
}

fn parse_distribution(section: &Section, def: &HyperparameterDef) -> Result<Domain, SpecError> {
    let distribution = section.required_choice("distribution", DISTRIBUTIONS)?;
    check_distribution_kind(section, distribution, def)?;
    match distribution {
        "int" => parse_int_distribution(section, def),
        "normal" | "log_normal" => parse_normal(section, def, distribution == "log_normal"),
        _ => parse_uniform(section, def, distribution == "log_uniform"),
    }
}

fn parse_uniform(
    section: &Section,
    def: &HyperparameterDef,
    log: bool,
) -> Result<Domain, SpecError> {
    section.check_keys(FLOAT_DISTRIBUTION_KEYS)?;
    let min = float_bound(section, "min", def)?;
    let max = float_bound(section, "max", def)?;
    if log && min <= 0.0 {
        let path = section.key_path("min");
        return Err(invalid(
            &path,
            "a number > 0 for log_uniform",
            &format!("{min:?}"),
        ));
    }
    if min >= max {
        return Err(SpecError(format!(
            "invalid {}: expected min < max, got min = {min:?} and max = {max:?}",
            section.path
        )));
    }
    let q = parse_q(section, min, max)?;
    Ok(if log {
        Domain::LogUniform { min, max, q }
    } else {
        Domain::Uniform { min, max, q }
    })
}

/// Reads `mu`, `sigma` and the optional clip bounds `min` and `max`. The clip range is also
/// narrowed to the hyperparameter's own range.
fn parse_normal(
    section: &Section,
    def: &HyperparameterDef,
    log: bool,
) -> Result<Domain, SpecError> {
    section.check_keys(NORMAL_DISTRIBUTION_KEYS)?;
    let mu = section
        .float("mu", "a number", |_| true)?
        .ok_or_else(|| section.missing("mu", "a number"))?;
    let sigma = section
        .float("sigma", "a number > 0", |x| x > 0.0)?
        .ok_or_else(|| section.missing("sigma", "a number > 0"))?;
    let (range_min, range_max) = def.range.unwrap_or((f64::NEG_INFINITY, f64::INFINITY));
    let min = match section.get("min") {
        Some(_) => float_bound(section, "min", def)?,
        None => range_min,
    };
    let max = match section.get("max") {
        Some(_) => float_bound(section, "max", def)?,
        None => range_max,
    };
    if min >= max {
        return Err(SpecError(format!(
            "invalid {}: expected min < max, got min = {min:?} and max = {max:?}",
            section.path
        )));
    }
    let q = parse_q(section, min, max)?;
    Ok(if log {
        Domain::LogNormal {
            mu,
            sigma,
            min,
            max,
            q,
        }
    } else {
        Domain::Normal {
            mu,
            sigma,
            min,
            max,
            q,
        }
    })
}

/// Reads the quantization step `q`, which needs a multiple of itself within [min, max].
fn parse_q(section: &Section, min: f64, max: f64) -> Result<Option<f64>, SpecError> {
    let Some(q) = section.float("q", "a number > 0", |x| x > 0.0)? else {
        return Ok(None);
    };
    if crate::search::quantize(min, q, min, max).is_none() {
        return Err(SpecError(format!(
            "invalid {}: no multiple of q = {q:?} lies between min = {min:?} and max = {max:?}",
            section.key_path("q")
        )));
    }
    Ok(Some(q))
}

/// Rejects a distribution over a hyperparameter of the wrong type: `int` draws only ints, and
/// `uniform` and `log_uniform` draw only floats.
fn check_distribution_kind(
    section: &Section,
    distribution: &str,
    def: &HyperparameterDef,
) -> Result<(), SpecError> {
    let needed = if distribution == "int" {
        Kind::Int
    } else {
        Kind::Float
    };
    if def.kind == needed {
        return Ok(());
    }
    let (kind, advice) = match def.kind {
        Kind::Int => ("an int", "use distribution = \"int\" or values = [...]"),
        Kind::Float => (
            "a float",
            "use distribution = \"uniform\", \"log_uniform\", \"normal\" or \"log_normal\"",
        ),
        Kind::String => ("a string", "use values = [...]"),
        Kind::Bool => ("a bool", "use values = [true, false]"),
    };
    let required_kind = if needed == Kind::Int { "int" } else { "float" };
    Err(SpecError(format!(
        "invalid {}: {distribution:?} is only for {required_kind} hyperparameters and {:?} is \
         {kind}, so {advice}",
        section.key_path("distribution"),
        def.name
    )))
}

fn float_bound(section: &Section, key: &str, def: &HyperparameterDef) -> Result<f64, SpecError> {
    let path = section.key_path(key);
    let raw = section
        .get(key)
        .ok_or_else(|| section.missing(key, "a number"))?;
    let value = match raw {
        toml::Value::Integer(i) => Value::Int(*i),
        toml::Value::Float(x) => Value::Float(*x),
        other => return Err(mistyped(&path, "a number", other)),
    };
    hyper::check_value(def, &value).map_err(|err| schema_error(&path, err))?;
    Ok(value.as_f64().unwrap_or_default())
}

fn parse_int_distribution(section: &Section, def: &HyperparameterDef) -> Result<Domain, SpecError> {
    section.check_keys(INT_DISTRIBUTION_KEYS)?;
    let min = int_bound(section, "min", def)?;
    let max = int_bound(section, "max", def)?;
    let step = section.int("step", 1, i64::MAX)?;
    let log = match section.get("log") {
        None => false,
        Some(toml::Value::Boolean(log)) => *log,
        Some(other) => return Err(mistyped(&section.key_path("log"), "a bool", other)),
    };
    if min > max {
        return Err(SpecError(format!(
            "invalid {}: expected min <= max, got min = {min} and max = {max}",
            section.path
        )));
    }
    if !log {
        let step = step.unwrap_or(1);
        return Ok(Domain::Int { min, max, step });
    }
    if min < 1 {
        let path = section.key_path("min");
        return Err(invalid(
            &path,
            "an int >= 1 with log = true",
            &min.to_string(),
        ));
    }
    if let Some(step) = step.filter(|step| *step != 1) {
        let path = section.key_path("step");
        return Err(invalid(
            &path,
            "1 or no step with log = true",
            &step.to_string(),
        ));
    }
    Ok(Domain::LogInt { min, max })
}

fn int_bound(section: &Section, key: &str, def: &HyperparameterDef) -> Result<i64, SpecError> {
    let path = section.key_path(key);
    let raw = section
        .get(key)
        .ok_or_else(|| section.missing(key, "an int"))?;
    let toml::Value::Integer(i) = raw else {
        return Err(mistyped(&path, "an int", raw));
    };
    hyper::check_value(def, &Value::Int(*i)).map_err(|err| schema_error(&path, err))?;
    Ok(*i)
}
