//! The trainer's hyperparameters: names, types, defaults and allowed ranges.
//!
//! The coordinator checks a sweep spec against this schema before any trial exists, and the
//! worker builds its [`TrainConfig`] from the same schema, so both agree on every name.

use crate::Value;

/// Models the trainer can build. "torchscript" trains the user's scripted module that the task's
/// `module` key names.
pub const MODELS: &[&str] = &[
    "mlp",
    "cnn",
    "resnet18",
    "resnet34",
    "resnet50",
    "torchscript",
];

/// Learning-rate schedules over the epochs of a run.
pub const LR_SCHEDULES: &[&str] = &["constant", "step", "cosine"];

/// Numeric precisions the trainer can compute in.
pub const PRECISIONS: &[&str] = &["fp32", "bf16"];

/// Optimizers the trainer can use.
pub const OPTIMIZERS: &[&str] = &["sgd", "adam", "adamw"];

/// The type a hyperparameter must have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Int,
    /// A float; ints are accepted and read as floats.
    Float,
    String,
    Bool,
}

/// One hyperparameter the trainer understands.
#[derive(Debug, Clone, Copy)]
pub struct HyperparameterDef {
    pub name: &'static str,
    pub kind: Kind,
    /// Models that read it; empty means every model.
    pub models: &'static [&'static str],
    pub default: DefaultValue,
    /// The allowed range in words, as error messages print it.
    pub allowed: &'static str,
    pub check: fn(&Value) -> bool,
    /// The closed interval of allowed values of a number hyperparameter, for clipping draws
    /// from unbounded distributions; `None` for strings and bools.
    pub range: Option<(f64, f64)>,
}

/// A schema default, usable in a `const` table.
#[derive(Debug, Clone, Copy)]
pub enum DefaultValue {
    Int(i64),
    Float(f64),
    Str(&'static str),
    Bool(bool),
}

impl DefaultValue {
    fn to_value(self) -> Value {
        match self {
            DefaultValue::Int(i) => Value::Int(i),
            DefaultValue::Float(f) => Value::Float(f),
            DefaultValue::Str(s) => Value::String(s.to_string()),
            DefaultValue::Bool(b) => Value::Bool(b),
        }
    }
}

fn float_in(value: &Value, low: f64, high: f64, high_inclusive: bool) -> bool {
    match value.as_f64() {
        Some(x) if high_inclusive => x >= low && x <= high,
        Some(x) => x >= low && x < high,
        None => false,
    }
}

fn int_in(value: &Value, low: i64, high: i64) -> bool {
    matches!(value.as_i64(), Some(i) if (low..=high).contains(&i))
}

/// The largest float below 1, the upper end of the ranges that exclude 1.
const BELOW_ONE: f64 = 1.0 - f64::EPSILON / 2.0;

/// Every hyperparameter, in the order `docs/spec.md` lists them.
pub const HYPERPARAMETERS: &[HyperparameterDef] = &[
    HyperparameterDef {
        name: "lr",
        kind: Kind::Float,
        models: &[],
        default: DefaultValue::Float(1e-3),
        allowed: "a float > 0 and <= 10",
        check: |v| matches!(v.as_f64(), Some(x) if x > 0.0 && x <= 10.0),
        range: Some((f64::MIN_POSITIVE, 10.0)),
    },
    HyperparameterDef {
        name: "batch_size",
        kind: Kind::Int,
        models: &[],
        default: DefaultValue::Int(64),
        allowed: "an int from 1 to 65536",
        check: |v| int_in(v, 1, 65536),
        range: Some((1.0, 65536.0)),
    },
    HyperparameterDef {
        name: "optimizer",
        kind: Kind::String,
        models: &[],
        default: DefaultValue::Str("adam"),
        allowed: "one of \"sgd\", \"adam\", \"adamw\"",
        check: |v| matches!(v.as_str(), Some(s) if OPTIMIZERS.contains(&s)),
        range: None,
    },
    HyperparameterDef {
        name: "momentum",
        kind: Kind::Float,
        models: &[],
        default: DefaultValue::Float(0.0),
        allowed: "a float >= 0 and < 1 (read by sgd only)",
        check: |v| float_in(v, 0.0, 1.0, false),
        range: Some((0.0, BELOW_ONE)),
    },
    HyperparameterDef {
        name: "weight_decay",
        kind: Kind::Float,
        models: &[],
        default: DefaultValue::Float(0.0),
        allowed: "a float >= 0 and <= 1",
        check: |v| float_in(v, 0.0, 1.0, true),
        range: Some((0.0, 1.0)),
    },
    HyperparameterDef {
        name: "dropout",
        kind: Kind::Float,
        models: &[],
        default: DefaultValue::Float(0.0),
        allowed: "a float >= 0 and < 1",
        check: |v| float_in(v, 0.0, 1.0, false),
        range: Some((0.0, BELOW_ONE)),
    },
    HyperparameterDef {
        name: "hidden_size",
        kind: Kind::Int,
        models: &["mlp"],
        default: DefaultValue::Int(128),
        allowed: "an int from 1 to 65536",
        check: |v| int_in(v, 1, 65536),
        range: Some((1.0, 65536.0)),
    },
    HyperparameterDef {
        name: "hidden_layers",
        kind: Kind::Int,
        models: &["mlp"],
        default: DefaultValue::Int(1),
        allowed: "an int from 0 to 16",
        check: |v| int_in(v, 0, 16),
        range: Some((0.0, 16.0)),
    },
    HyperparameterDef {
        name: "channels",
        kind: Kind::Int,
        models: &["cnn"],
        default: DefaultValue::Int(16),
        allowed: "an int from 1 to 1024",
        check: |v| int_in(v, 1, 1024),
        range: Some((1.0, 1024.0)),
    },
    HyperparameterDef {
        name: "freeze_backbone",
        kind: Kind::Bool,
        models: &[],
        default: DefaultValue::Bool(false),
        allowed: "true or false",
        check: |v| matches!(v, Value::Bool(_)),
        range: None,
    },
    HyperparameterDef {
        name: "unfreeze_epoch",
        kind: Kind::Int,
        models: &[],
        default: DefaultValue::Int(0),
        allowed: "an int from 0 to 10000 (0 keeps a frozen backbone frozen)",
        check: |v| int_in(v, 0, 10000),
        range: Some((0.0, 10000.0)),
    },
    HyperparameterDef {
        name: "backbone_lr_factor",
        kind: Kind::Float,
        models: &[],
        default: DefaultValue::Float(1.0),
        allowed: "a float >= 0 and <= 1",
        check: |v| float_in(v, 0.0, 1.0, true),
        range: Some((0.0, 1.0)),
    },
    HyperparameterDef {
        name: "lr_schedule",
        kind: Kind::String,
        models: &[],
        default: DefaultValue::Str("constant"),
        allowed: "one of \"constant\", \"step\", \"cosine\"",
        check: |v| matches!(v.as_str(), Some(s) if LR_SCHEDULES.contains(&s)),
        range: None,
    },
    HyperparameterDef {
        name: "warmup_epochs",
        kind: Kind::Int,
        models: &[],
        default: DefaultValue::Int(0),
        allowed: "an int from 0 to 10000",
        check: |v| int_in(v, 0, 10000),
        range: Some((0.0, 10000.0)),
    },
    HyperparameterDef {
        name: "step_size",
        kind: Kind::Int,
        models: &[],
        default: DefaultValue::Int(10),
        allowed: "an int from 1 to 10000 (read by the step schedule only)",
        check: |v| int_in(v, 1, 10000),
        range: Some((1.0, 10000.0)),
    },
    HyperparameterDef {
        name: "gamma",
        kind: Kind::Float,
        models: &[],
        default: DefaultValue::Float(0.1),
        allowed: "a float > 0 and <= 1 (read by the step schedule only)",
        check: |v| matches!(v.as_f64(), Some(x) if x > 0.0 && x <= 1.0),
        range: Some((f64::MIN_POSITIVE, 1.0)),
    },
    HyperparameterDef {
        name: "label_smoothing",
        kind: Kind::Float,
        models: &[],
        default: DefaultValue::Float(0.0),
        allowed: "a float >= 0 and < 1",
        check: |v| float_in(v, 0.0, 1.0, false),
        range: Some((0.0, BELOW_ONE)),
    },
    HyperparameterDef {
        name: "grad_clip_norm",
        kind: Kind::Float,
        models: &[],
        default: DefaultValue::Float(0.0),
        allowed: "a float >= 0 and <= 1e6 (0 turns clipping off)",
        check: |v| float_in(v, 0.0, 1e6, true),
        range: Some((0.0, 1e6)),
    },
    HyperparameterDef {
        name: "patience",
        kind: Kind::Int,
        models: &[],
        default: DefaultValue::Int(0),
        allowed: "an int from 0 to 10000 (0 turns early stopping off)",
        check: |v| int_in(v, 0, 10000),
        range: Some((0.0, 10000.0)),
    },
    HyperparameterDef {
        name: "precision",
        kind: Kind::String,
        models: &[],
        default: DefaultValue::Str("fp32"),
        allowed: "one of \"fp32\", \"bf16\"",
        check: |v| matches!(v.as_str(), Some(s) if PRECISIONS.contains(&s)),
        range: None,
    },
    HyperparameterDef {
        name: "augment",
        kind: Kind::Bool,
        models: &[],
        default: DefaultValue::Bool(false),
        allowed: "true or false",
        check: |v| matches!(v, Value::Bool(_)),
        range: None,
    },
    HyperparameterDef {
        name: "crop_padding",
        kind: Kind::Int,
        models: &[],
        default: DefaultValue::Int(4),
        allowed: "an int from 0 to 64 (read when augment is true)",
        check: |v| int_in(v, 0, 64),
        range: Some((0.0, 64.0)),
    },
];

/// A hyperparameter that the trainer does not accept.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum HyperparameterError {
    #[error(
        "unknown model {0:?}: expected one of \"mlp\", \"cnn\", \"resnet18\", \"resnet34\", \
         \"resnet50\", \"torchscript\""
    )]
    UnknownModel(String),
    #[error("unknown hyperparameter {name:?} for model {model:?}: expected one of {expected}")]
    Unknown {
        name: String,
        model: String,
        expected: String,
    },
    #[error("invalid hyperparameter {name:?}: expected {allowed}, got {value} ({type_name})")]
    Invalid {
        name: String,
        value: String,
        type_name: &'static str,
        allowed: &'static str,
    },
}

/// Finds the definition of `name` if `model` reads it.
pub fn lookup(model: &str, name: &str) -> Result<&'static HyperparameterDef, HyperparameterError> {
    if !MODELS.contains(&model) {
        return Err(HyperparameterError::UnknownModel(model.to_string()));
    }
    HYPERPARAMETERS
        .iter()
        .find(|def| def.name == name && applies(def, model))
        .ok_or_else(|| HyperparameterError::Unknown {
            name: name.to_string(),
            model: model.to_string(),
            expected: names_for(model).join(", "),
        })
}

/// Checks one value against its definition.
pub fn check_value(def: &HyperparameterDef, value: &Value) -> Result<(), HyperparameterError> {
    let type_ok = match def.kind {
        Kind::Int => matches!(value, Value::Int(_)),
        Kind::Float => value.as_f64().is_some(),
        Kind::String => matches!(value, Value::String(_)),
        Kind::Bool => matches!(value, Value::Bool(_)),
    };
    if type_ok && (def.check)(value) {
        return Ok(());
    }
    Err(HyperparameterError::Invalid {
        name: def.name.to_string(),
        value: value.to_string(),
        type_name: value.type_name(),
        allowed: def.allowed,
    })
}

fn applies(def: &HyperparameterDef, model: &str) -> bool {
    def.models.is_empty() || def.models.contains(&model)
}

fn names_for(model: &str) -> Vec<&'static str> {
    HYPERPARAMETERS
        .iter()
        .filter(|def| applies(def, model))
        .map(|def| def.name)
        .collect()
}

/// The trainer's settings for one trial, every hyperparameter resolved to a value.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainConfig {
    pub model: String,
    pub lr: f64,
    pub batch_size: i64,
    pub optimizer: String,
    pub momentum: f64,
    pub weight_decay: f64,
    pub dropout: f64,
    pub hidden_size: i64,
    pub hidden_layers: i64,
    pub channels: i64,
    /// Trains only the head while true; the backbone runs in eval mode without gradients.
    pub freeze_backbone: bool,
    /// The epoch (from 1) at which a frozen backbone starts training; 0 keeps it frozen.
    pub unfreeze_epoch: i64,
    /// The backbone's learning rate as a fraction of the head's.
    pub backbone_lr_factor: f64,
    pub lr_schedule: String,
    pub warmup_epochs: i64,
    pub step_size: i64,
    pub gamma: f64,
    pub label_smoothing: f64,
    /// The maximum L2 norm of all gradients together; 0 turns clipping off.
    pub grad_clip_norm: f64,
    /// Epochs without improvement of the objective before training stops; 0 never stops early.
    pub patience: i64,
    pub precision: String,
    pub augment: bool,
    pub crop_padding: i64,
}

impl TrainConfig {
    /// Builds the config from named values, later values overriding earlier ones and
    /// schema defaults filling the rest. Fails on an unknown name or an invalid value.
    pub fn from_params(
        model: &str,
        params: &[(String, Value)],
    ) -> Result<Self, HyperparameterError> {
        for (name, value) in params {
            check_value(lookup(model, name)?, value)?;
        }
        let get = |name: &str| -> Value {
            params
                .iter()
                .rev()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.clone())
                .unwrap_or_else(|| {
                    let def = HYPERPARAMETERS.iter().find(|d| d.name == name);
                    def.expect("every TrainConfig field is in HYPERPARAMETERS")
                        .default
                        .to_value()
                })
        };
        let float = |name: &str| get(name).as_f64().expect("checked as a number");
        let int = |name: &str| get(name).as_i64().expect("checked as an int");
        let string = |name: &str| get(name).as_str().expect("checked as a string").to_string();
        let boolean = |name: &str| matches!(get(name), Value::Bool(true));
        Ok(TrainConfig {
            model: model.to_string(),
            lr: float("lr"),
            batch_size: int("batch_size"),
            optimizer: string("optimizer"),
            momentum: float("momentum"),
            weight_decay: float("weight_decay"),
            dropout: float("dropout"),
            hidden_size: int("hidden_size"),
            hidden_layers: int("hidden_layers"),
            channels: int("channels"),
            freeze_backbone: boolean("freeze_backbone"),
            unfreeze_epoch: int("unfreeze_epoch"),
            backbone_lr_factor: float("backbone_lr_factor"),
            lr_schedule: string("lr_schedule"),
            warmup_epochs: int("warmup_epochs"),
            step_size: int("step_size"),
            gamma: float("gamma"),
            label_smoothing: float("label_smoothing"),
            grad_clip_norm: float("grad_clip_norm"),
            patience: int("patience"),
            precision: string("precision"),
            augment: boolean("augment"),
            crop_padding: int("crop_padding"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn param(name: &str, value: Value) -> (String, Value) {
        (name.to_string(), value)
    }

    #[test]
    fn range_ends_are_allowed_values() {
        for def in HYPERPARAMETERS {
            let Some((low, high)) = def.range else {
                assert!(
                    matches!(def.kind, Kind::String | Kind::Bool),
                    "{} has no range",
                    def.name
                );
                continue;
            };
            for end in [low, high] {
                let value = match def.kind {
                    Kind::Int => Value::Int(end as i64),
                    _ => Value::Float(end),
                };
                assert!(
                    check_value(def, &value).is_ok(),
                    "{} rejects {end}",
                    def.name
                );
            }
            let below = Value::Float(low - low.abs().max(1.0) * f64::EPSILON * 4.0);
            let above = Value::Float(high + high.abs().max(1.0) * f64::EPSILON * 4.0);
            if def.kind == Kind::Float {
                assert!(
                    check_value(def, &below).is_err(),
                    "{} accepts {below}",
                    def.name
                );
                assert!(
                    check_value(def, &above).is_err(),
                    "{} accepts {above}",
                    def.name
                );
            }
        }
    }

    #[test]
    fn config_fills_defaults() {
        let config = TrainConfig::from_params("mlp", &[]).unwrap();
        assert_eq!(config.lr, 1e-3);
        assert_eq!(config.batch_size, 64);
        assert_eq!(config.optimizer, "adam");
        assert_eq!(config.hidden_size, 128);
    }

    #[test]
    fn config_reads_int_as_float() {
        let config = TrainConfig::from_params("mlp", &[param("lr", Value::Int(1))]).unwrap();
        assert_eq!(config.lr, 1.0);
    }

    #[test]
    fn config_later_value_wins() {
        let params = [
            param("lr", Value::Float(0.1)),
            param("lr", Value::Float(0.2)),
        ];
        assert_eq!(TrainConfig::from_params("cnn", &params).unwrap().lr, 0.2);
    }

    #[test]
    fn config_rejects_float_batch_size() {
        let err = TrainConfig::from_params("mlp", &[param("batch_size", Value::Float(32.0))]);
        assert_eq!(
            err.unwrap_err().to_string(),
            "invalid hyperparameter \"batch_size\": expected an int from 1 to 65536, got 32.0 (float)"
        );
    }

    #[test]
    fn config_rejects_model_mismatch() {
        let err = TrainConfig::from_params("cnn", &[param("hidden_size", Value::Int(8))]);
        let message = err.unwrap_err().to_string();
        assert!(
            message.starts_with("unknown hyperparameter \"hidden_size\" for model \"cnn\""),
            "{message}"
        );
        assert!(message.contains("channels"), "{message}");
    }

    #[test]
    fn config_reads_finetuning_keys() {
        let params = [
            param("freeze_backbone", Value::Bool(true)),
            param("unfreeze_epoch", Value::Int(3)),
            param("lr_schedule", Value::String("cosine".into())),
        ];
        let config = TrainConfig::from_params("resnet18", &params).unwrap();
        assert!(config.freeze_backbone);
        assert_eq!(config.unfreeze_epoch, 3);
        assert_eq!(config.lr_schedule, "cosine");
        assert_eq!(config.backbone_lr_factor, 1.0);
    }

    #[test]
    fn config_rejects_int_as_bool() {
        let err = TrainConfig::from_params("mlp", &[param("freeze_backbone", Value::Int(1))]);
        assert_eq!(
            err.unwrap_err().to_string(),
            "invalid hyperparameter \"freeze_backbone\": expected true or false, got 1 (int)"
        );
    }

    #[test]
    fn config_rejects_unknown_schedule() {
        let err = TrainConfig::from_params(
            "cnn",
            &[param("lr_schedule", Value::String("linear".into()))],
        );
        assert_eq!(
            err.unwrap_err().to_string(),
            "invalid hyperparameter \"lr_schedule\": expected one of \"constant\", \"step\", \
             \"cosine\", got \"linear\" (string)"
        );
    }

    #[test]
    fn config_rejects_unknown_optimizer() {
        let err =
            TrainConfig::from_params("mlp", &[param("optimizer", Value::String("lbfgs".into()))]);
        assert!(err.unwrap_err().to_string().contains("got \"lbfgs\""));
    }
}
