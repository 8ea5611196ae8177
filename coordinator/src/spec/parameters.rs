//! The search space: `[parameters]` in its three forms, checked against the trainer's schema.

use std::collections::HashMap;

use tunefleet_proto::hyper::{self, HyperparameterDef, Kind};
use tunefleet_proto::Value;

use super::section::{describe, invalid, mistyped, schema_error, to_value, unknown_key, Section};
use super::{Domain, Method, ParameterSpec, SpecError};

const VALUES_KEYS: &[&str] = &["values"];
const FLOAT_DISTRIBUTION_KEYS: &[&str] = &["distribution", "min", "max"];
const INT_DISTRIBUTION_KEYS: &[&str] = &["distribution", "min", "max", "step"];
const DISTRIBUTIONS: &[&str] = &["uniform", "log_uniform", "int"];

pub(super) fn parse_parameters(
    section: &Section,
    model: &str,
    method: Method,
) -> Result<Vec<ParameterSpec>, SpecError> {
    let Some(table) = section.table else {
        return Ok(Vec::new());
    };
    let mut parameters = Vec::with_capacity(table.len());
    for (name, raw) in table {
        let path = section.key_path(name);
        let def = hyper::lookup(model, name).map_err(|err| schema_error(&path, err))?;
        let domain = parse_domain(&path, def, raw)?;
        if method == Method::Grid {
            check_finite(&path, name, &domain)?;
        }
        parameters.push(ParameterSpec {
            name: name.clone(),
            domain,
        });
    }
    Ok(parameters)
}

fn check_finite(path: &str, name: &str, domain: &Domain) -> Result<(), SpecError> {
    let distribution = match domain {
        Domain::Uniform { .. } => "uniform",
        Domain::LogUniform { .. } => "log_uniform",
        Domain::Values(_) | Domain::Int { .. } => return Ok(()),
    };
    Err(SpecError(format!(
        "invalid {path}: grid search needs a finite domain, but {name:?} has a {distribution} \
         distribution, so list its points with values = [...] or set search.method = \"random\""
    )))
}

/// Reads one parameter in any of its forms: a bare array, `{ values = [...] }` or
/// `{ distribution = ..., min = ..., max = ... }`.
fn parse_domain(
    path: &str,
    def: &HyperparameterDef,
    raw: &toml::Value,
) -> Result<Domain, SpecError> {
    let expected = "an array of values or a table with a values or distribution key";
    let table = match raw {
        toml::Value::Array(items) => return parse_values(path, def, items),
        toml::Value::Table(table) => table,
        other => {
            let got = describe(other);
            return Err(SpecError(format!(
                "invalid {path}: expected {expected}, got {got}, but a fixed value belongs in \
                 [task.hyperparameters]"
            )));
        }
    };
    let section = Section {
        path: path.to_string(),
        table: Some(table),
    };
    match (table.get("values"), table.get("distribution")) {
        (Some(_), Some(_)) => Err(SpecError(format!(
            "invalid {path}: expected either values or distribution, got both"
        ))),
        (Some(values), None) => {
            section.check_keys(VALUES_KEYS)?;
            let values_path = section.key_path("values");
            match values {
                toml::Value::Array(items) => parse_values(&values_path, def, items),
                other => Err(mistyped(&values_path, "an array of values", other)),
            }
        }
        (None, Some(_)) => parse_distribution(&section, def),
        (None, None) => match table.keys().next() {
            Some(key) => Err(unknown_key(
                &section.key_path(key),
                &["values", "distribution"],
            )),
            None => Err(invalid(path, expected, "an empty table")),
        },
    }
}

fn parse_values(
    path: &str,
    def: &HyperparameterDef,
    items: &[toml::Value],
) -> Result<Domain, SpecError> {
    if items.is_empty() {
        return Err(invalid(path, "at least one value", "an empty array"));
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
    if distribution == "int" {
        return parse_int_distribution(section, def);
    }

    section.check_keys(FLOAT_DISTRIBUTION_KEYS)?;
    let min = float_bound(section, "min", def)?;
    let max = float_bound(section, "max", def)?;
    if distribution == "log_uniform" && min <= 0.0 {
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
    Ok(if distribution == "uniform" {
        Domain::Uniform { min, max }
    } else {
        Domain::LogUniform { min, max }
    })
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
            "use distribution = \"uniform\" or \"log_uniform\"",
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
    let step = section.int("step", 1, i64::MAX)?.unwrap_or(1);
    if min > max {
        return Err(SpecError(format!(
            "invalid {}: expected min <= max, got min = {min} and max = {max}",
            section.path
        )));
    }
    Ok(Domain::Int { min, max, step })
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
