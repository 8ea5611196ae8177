//! Typed hyperparameter values, kept with their declared type from spec to trainer.

use std::fmt;

use crate::v1::{self, param_value::Kind};

/// A hyperparameter value: an int stays an int and a string stays a string end to end.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Int(i64),
    Float(f64),
    String(String),
    Bool(bool),
}

impl Value {
    /// Names the value's type as the spec documentation does.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Int(_) => "int",
            Value::Float(_) => "float",
            Value::String(_) => "string",
            Value::Bool(_) => "bool",
        }
    }

    /// Returns the value as a float when it is a number (ints convert exactly up to 2^53).
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Int(i) => Some(*i as f64),
            Value::Float(f) => Some(*f),
            _ => None,
        }
    }

    /// Returns the value when it is an int.
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }

    /// Returns the value when it is a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// Converts a protobuf value; `None` when its `kind` is unset.
    pub fn from_proto(value: &v1::ParamValue) -> Option<Value> {
        Some(match value.kind.as_ref()? {
            Kind::IntValue(i) => Value::Int(*i),
            Kind::FloatValue(f) => Value::Float(*f),
            Kind::StringValue(s) => Value::String(s.clone()),
            Kind::BoolValue(b) => Value::Bool(*b),
        })
    }

    /// Converts into the protobuf form.
    pub fn to_proto(&self) -> v1::ParamValue {
        let kind = match self {
            Value::Int(i) => Kind::IntValue(*i),
            Value::Float(f) => Kind::FloatValue(*f),
            Value::String(s) => Kind::StringValue(s.clone()),
            Value::Bool(b) => Kind::BoolValue(*b),
        };
        v1::ParamValue { kind: Some(kind) }
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Int(i) => write!(f, "{i}"),
            // `{:?}` keeps a trailing ".0" so a float never reads as an int.
            Value::Float(x) => write!(f, "{x:?}"),
            Value::String(s) => write!(f, "{s:?}"),
            Value::Bool(b) => write!(f, "{b}"),
        }
    }
}

/// Converts an ordered list of named values into protobuf params.
pub fn params_to_proto(params: &[(String, Value)]) -> Vec<v1::Param> {
    params
        .iter()
        .map(|(name, value)| v1::Param {
            name: name.clone(),
            value: Some(value.to_proto()),
        })
        .collect()
}

/// Converts protobuf params back, rejecting a param whose value is unset.
pub fn params_from_proto(params: &[v1::Param]) -> Result<Vec<(String, Value)>, String> {
    params
        .iter()
        .map(|p| {
            let value = p
                .value
                .as_ref()
                .and_then(Value::from_proto)
                .ok_or_else(|| format!("parameter {:?} has no value", p.name))?;
            Ok((p.name.clone(), value))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn value_keeps_type_through_proto() {
        for value in [
            Value::Int(64),
            Value::Float(64.0),
            Value::String("adam".into()),
            Value::Bool(true),
        ] {
            assert_eq!(Value::from_proto(&value.to_proto()), Some(value));
        }
    }

    #[test]
    fn float_display_keeps_decimal_point() {
        assert_eq!(Value::Float(1.0).to_string(), "1.0");
        assert_eq!(Value::Int(1).to_string(), "1");
    }
}
