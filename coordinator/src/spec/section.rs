//! Reading the parsed TOML tree with the key path at hand, and the wording of spec errors.

use tunefleet_proto::hyper::HyperparameterError;
use tunefleet_proto::Value;

use super::SpecError;

/// A table of the spec with its dotted key path, so every error can name the full key.
///
/// A section the spec leaves out has no table and reads as empty.
pub(super) struct Section<'a> {
    pub(super) path: String,
    pub(super) table: Option<&'a toml::Table>,
}

impl<'a> Section<'a> {
    pub(super) fn root(table: &'a toml::Table) -> Self {
        Section {
            path: String::new(),
            table: Some(table),
        }
    }

    pub(super) fn key_path(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    pub(super) fn get(&self, key: &str) -> Option<&'a toml::Value> {
        self.table.and_then(|table| table.get(key))
    }

    pub(super) fn check_keys(&self, allowed: &[&str]) -> Result<(), SpecError> {
        let Some(table) = self.table else {
            return Ok(());
        };
        match table.keys().find(|key| !allowed.contains(&key.as_str())) {
            Some(key) => Err(unknown_key(&self.key_path(key), allowed)),
            None => Ok(()),
        }
    }

    /// Returns the sub-table `key`, empty when the spec leaves it out.
    pub(super) fn section(&self, key: &str) -> Result<Section<'a>, SpecError> {
        let path = self.key_path(key);
        match self.get(key) {
            None => Ok(Section { path, table: None }),
            Some(toml::Value::Table(table)) => Ok(Section {
                path,
                table: Some(table),
            }),
            Some(other) => Err(mistyped(&path, "a table", other)),
        }
    }

    pub(super) fn missing(&self, key: &str, expected: &str) -> SpecError {
        SpecError(format!(
            "missing {}: expected {expected}",
            self.key_path(key)
        ))
    }

    pub(super) fn string(&self, key: &str, expected: &str) -> Result<Option<&'a str>, SpecError> {
        match self.get(key) {
            None => Ok(None),
            Some(toml::Value::String(text)) => Ok(Some(text)),
            Some(other) => Err(mistyped(&self.key_path(key), expected, other)),
        }
    }

    pub(super) fn choice(&self, key: &str, options: &[&str]) -> Result<Option<&'a str>, SpecError> {
        let expected = one_of(options);
        let Some(text) = self.string(key, &expected)? else {
            return Ok(None);
        };
        if options.contains(&text) {
            Ok(Some(text))
        } else {
            Err(invalid(
                &self.key_path(key),
                &expected,
                &format!("{text:?}"),
            ))
        }
    }

    pub(super) fn required_choice(
        &self,
        key: &str,
        options: &[&str],
    ) -> Result<&'a str, SpecError> {
        self.choice(key, options)?
            .ok_or_else(|| self.missing(key, &one_of(options)))
    }

    pub(super) fn int(&self, key: &str, min: i64, max: i64) -> Result<Option<i64>, SpecError> {
        let path = self.key_path(key);
        let expected = int_range(min, max);
        match self.get(key) {
            None => Ok(None),
            Some(toml::Value::Integer(i)) if (min..=max).contains(i) => Ok(Some(*i)),
            Some(toml::Value::Integer(i)) => Err(invalid(&path, &expected, &i.to_string())),
            Some(other) => Err(mistyped(&path, &expected, other)),
        }
    }

    pub(super) fn bool(&self, key: &str) -> Result<Option<bool>, SpecError> {
        match self.get(key) {
            None => Ok(None),
            Some(toml::Value::Boolean(b)) => Ok(Some(*b)),
            Some(other) => Err(mistyped(&self.key_path(key), "a bool", other)),
        }
    }

    /// Reads a number (a TOML int or float) that `accept` allows; `expected` describes them.
    pub(super) fn float(
        &self,
        key: &str,
        expected: &str,
        accept: impl Fn(f64) -> bool,
    ) -> Result<Option<f64>, SpecError> {
        let path = self.key_path(key);
        let x = match self.get(key) {
            None => return Ok(None),
            Some(toml::Value::Integer(i)) => *i as f64,
            Some(toml::Value::Float(x)) => *x,
            Some(other) => return Err(mistyped(&path, expected, other)),
        };
        if x.is_finite() && accept(x) {
            Ok(Some(x))
        } else {
            Err(invalid(&path, expected, &format!("{x:?}")))
        }
    }

    /// Reads an array of numbers, each of which `accept` must take.
    pub(super) fn floats(
        &self,
        key: &str,
        expected: &str,
        accept: impl Fn(f64) -> bool,
    ) -> Result<Option<Vec<f64>>, SpecError> {
        let path = self.key_path(key);
        let items = match self.get(key) {
            None => return Ok(None),
            Some(toml::Value::Array(items)) => items,
            Some(other) => return Err(mistyped(&path, expected, other)),
        };
        let mut values = Vec::with_capacity(items.len());
        for item in items {
            let x = match item {
                toml::Value::Integer(i) => *i as f64,
                toml::Value::Float(x) => *x,
                other => return Err(mistyped(&path, expected, other)),
            };
            if !x.is_finite() || !accept(x) {
                return Err(invalid(&path, expected, &format!("{x:?}")));
            }
            values.push(x);
        }
        Ok(Some(values))
    }

    pub(super) fn u32(&self, key: &str, min: u32, max: u32) -> Result<Option<u32>, SpecError> {
        let value = self.int(key, min.into(), max.into())?;
        // The range check above keeps the value within u32.
        Ok(value.map(|i| i as u32))
    }
}

/// Converts a TOML scalar into a hyperparameter value, keeping its type.
pub(super) fn to_value(path: &str, raw: &toml::Value) -> Result<Value, SpecError> {
    Ok(match raw {
        toml::Value::Integer(i) => Value::Int(*i),
        toml::Value::Float(x) => Value::Float(*x),
        toml::Value::String(s) => Value::String(s.clone()),
        toml::Value::Boolean(b) => Value::Bool(*b),
        other => return Err(mistyped(path, "an int, float, string or bool", other)),
    })
}

/// Wraps a TOML syntax error, whose message gives the line and column.
pub(super) fn toml_error(toml_text: &str, err: toml::de::Error) -> SpecError {
    let mut message = format!("invalid spec TOML: {}", err.to_string().trim_end());
    // toml 0.9 words an int outside i64 in serde's terms ("u64 value was too large" and
    // others), which do not state the allowed range.
    let literal = err
        .span()
        .and_then(|span| toml_text.get(span))
        .unwrap_or("");
    if is_int_literal(literal) {
        message.push_str(&format!(
            "\nTOML ints range from {} to {}",
            i64::MIN,
            i64::MAX
        ));
    }
    SpecError(message)
}

/// Returns whether `text` is written like a TOML int (decimal, hex, octal or binary).
fn is_int_literal(text: &str) -> bool {
    let unsigned = text.strip_prefix(['+', '-']).unwrap_or(text);
    let (digits, radix) = match unsigned.get(..2) {
        Some("0x") => (&unsigned[2..], 16),
        Some("0o") => (&unsigned[2..], 8),
        Some("0b") => (&unsigned[2..], 2),
        _ => (unsigned, 10),
    };
    !digits.is_empty() && digits.chars().all(|c| c == '_' || c.is_digit(radix))
}

pub(super) fn unknown_key(path: &str, allowed: &[&str]) -> SpecError {
    SpecError(format!(
        "unknown key {path}: expected one of {}",
        allowed.join(", ")
    ))
}

pub(super) fn invalid(path: &str, expected: &str, got: &str) -> SpecError {
    SpecError(format!("invalid {path}: expected {expected}, got {got}"))
}

/// Builds the error for a value of the wrong type, naming the type found.
pub(super) fn mistyped(path: &str, expected: &str, raw: &toml::Value) -> SpecError {
    invalid(path, expected, &describe(raw))
}

pub(super) fn schema_error(path: &str, err: HyperparameterError) -> SpecError {
    SpecError(format!("{path}: {err}"))
}

/// Describes a TOML value with its type, in the words `Value::type_name` uses.
pub(super) fn describe(raw: &toml::Value) -> String {
    match raw {
        toml::Value::Integer(i) => format!("{i} (int)"),
        toml::Value::Float(x) => format!("{x:?} (float)"),
        toml::Value::String(s) => format!("{s:?} (string)"),
        toml::Value::Boolean(b) => format!("{b} (bool)"),
        toml::Value::Datetime(d) => format!("{d} (datetime)"),
        toml::Value::Array(_) => "an array".to_string(),
        toml::Value::Table(_) => "a table".to_string(),
    }
}

pub(super) fn one_of(options: &[&str]) -> String {
    let quoted: Vec<String> = options.iter().map(|option| format!("{option:?}")).collect();
    format!("one of {}", quoted.join(", "))
}

fn int_range(min: i64, max: i64) -> String {
    if max == i64::MAX {
        format!("an int >= {min}")
    } else {
        format!("an int from {min} to {max}")
    }
}
