//! The `[early_stopping]` section: which rule may stop trials after an epoch report.

use super::section::{invalid, unknown_key, Section};
use super::SpecError;

const DEFAULT_GRACE_EPOCHS: u32 = 1;
const DEFAULT_MIN_SAMPLES: u32 = 3;
const DEFAULT_MIN_RESOURCE: u32 = 1;
const DEFAULT_REDUCTION_FACTOR: u32 = 3;
const MAX_REDUCTION_FACTOR: u32 = 1_000;
const MAX_MIN_SAMPLES: u32 = 100_000;

const METHODS: &[&str] = &["median", "asha", "hyperband"];
const ALL_KEYS: &[&str] = &[
    "method",
    "grace_epochs",
    "min_samples",
    "min_resource",
    "max_resource",
    "reduction_factor",
    "brackets",
];
const MEDIAN_KEYS: &[&str] = &["method", "grace_epochs", "min_samples"];
const ASHA_KEYS: &[&str] = &[
    "method",
    "min_resource",
    "max_resource",
    "reduction_factor",
    "min_samples",
];
const HYPERBAND_KEYS: &[&str] = &[
    "method",
    "min_resource",
    "max_resource",
    "reduction_factor",
    "min_samples",
    "brackets",
];

/// The rule that may stop a trial early, from `[early_stopping]`.
#[derive(Debug, Clone, PartialEq)]
pub enum EarlyStoppingSpec {
    /// The median stopping rule of Google Vizier (Golovin et al. 2017).
    Median(MedianRule),
    /// Asynchronous successive halving (Li et al. 2018) with one bracket.
    Asha(HalvingRule),
    /// Hyperband as brackets of asynchronous successive halving.
    Hyperband(HalvingRule),
}

/// Settings of the median stopping rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MedianRule {
    /// Epochs at the start of a trial that are never judged.
    pub grace_epochs: u32,
    /// Other trials that must have reported an epoch before a trial is judged at that epoch.
    pub min_samples: u32,
}

/// Settings of successive halving: ASHA, or Hyperband when `brackets` is above 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HalvingRule {
    /// Epochs at the first rung of bracket 0.
    pub min_resource: u32,
    /// Rungs lie strictly below this epoch.
    pub max_resource: u32,
    /// The factor eta between rungs; the top 1/eta of the results at a rung go on.
    pub reduction_factor: u32,
    /// Results of other trials of the same bracket a rung needs before it stops any trial.
    pub min_samples: u32,
    /// Number of brackets; bracket s starts at `min_resource * reduction_factor^s`.
    pub brackets: u32,
}

impl HalvingRule {
    /// Returns the rung epochs of bracket `bracket`, ascending: `min_resource * eta^(bracket +
    /// k)` for k = 0, 1, ... while below `max_resource`.
    pub fn rungs(&self, bracket: u32) -> Vec<u32> {
        let mut rungs = Vec::new();
        let mut epoch = u64::from(self.min_resource);
        for _ in 0..bracket {
            epoch *= u64::from(self.reduction_factor);
        }
        while epoch < u64::from(self.max_resource) {
            // Below max_resource, which is a u32.
            rungs.push(epoch as u32);
            epoch *= u64::from(self.reduction_factor);
        }
        rungs
    }

    /// Returns how many brackets have at least one rung: floor(log_eta((max - 1) / min)) + 1,
    /// counted exactly in integers.
    pub fn max_brackets(min_resource: u32, max_resource: u32, reduction_factor: u32) -> u32 {
        let mut count = 0;
        let mut epoch = u64::from(min_resource);
        while epoch < u64::from(max_resource) {
            count += 1;
            epoch *= u64::from(reduction_factor);
        }
        count
    }
}

/// Parses `[early_stopping]`; `None` when the spec leaves it out. `epochs` is `task.epochs`.
pub(super) fn parse_early_stopping(
    section: &Section,
    epochs: u32,
) -> Result<Option<EarlyStoppingSpec>, SpecError> {
    if section.table.is_none() {
        return Ok(None);
    }
    section.check_keys(ALL_KEYS)?;
    let method = section.required_choice("method", METHODS)?;
    let keys = match method {
        "median" => MEDIAN_KEYS,
        "asha" => ASHA_KEYS,
        _ => HYPERBAND_KEYS,
    };
    check_method_keys(section, method, keys)?;
    if epochs < 2 {
        return Err(SpecError(format!(
            "invalid {}: early stopping needs task.epochs of at least 2, got {epochs}",
            section.path
        )));
    }
    let min_samples = section
        .u32("min_samples", 1, MAX_MIN_SAMPLES)?
        .unwrap_or(DEFAULT_MIN_SAMPLES);
    let rule = match method {
        "median" => {
            let grace_epochs = section
                .u32("grace_epochs", 0, epochs - 1)?
                .unwrap_or(DEFAULT_GRACE_EPOCHS);
            EarlyStoppingSpec::Median(MedianRule {
                grace_epochs,
                min_samples,
            })
        }
        "asha" => EarlyStoppingSpec::Asha(parse_halving(section, epochs, min_samples, false)?),
        _ => EarlyStoppingSpec::Hyperband(parse_halving(section, epochs, min_samples, true)?),
    };
    Ok(Some(rule))
}

/// Rejects a key of `[early_stopping]` that the chosen method does not read.
fn check_method_keys(section: &Section, method: &str, keys: &[&str]) -> Result<(), SpecError> {
    let table = section.table.expect("checked by the caller");
    match table.keys().find(|key| !keys.contains(&key.as_str())) {
        Some(key) => {
            let path = format!("{} for method {method:?}", section.key_path(key));
            Err(unknown_key(&path, keys))
        }
        None => Ok(()),
    }
}

fn parse_halving(
    section: &Section,
    epochs: u32,
    min_samples: u32,
    hyperband: bool,
) -> Result<HalvingRule, SpecError> {
    let min_resource = section
        .u32("min_resource", 1, epochs - 1)?
        .unwrap_or(DEFAULT_MIN_RESOURCE);
    let max_resource = match section.get("max_resource") {
        None => epochs,
        Some(_) => {
            let max_path = section.key_path("max_resource");
            let min_path = section.key_path("min_resource");
            let value = section.int("max_resource", 1, i64::MAX)?.unwrap_or(1);
            if value <= i64::from(min_resource) || value > i64::from(epochs) {
                let expected = format!(
                    "an int above {min_path} ({min_resource}) and at most task.epochs ({epochs})"
                );
                return Err(invalid(&max_path, &expected, &value.to_string()));
            }
            value as u32
        }
    };
    let reduction_factor = section
        .u32("reduction_factor", 2, MAX_REDUCTION_FACTOR)?
        .unwrap_or(DEFAULT_REDUCTION_FACTOR);
    let max_brackets = HalvingRule::max_brackets(min_resource, max_resource, reduction_factor);
    let brackets = if hyperband {
        parse_brackets(section, max_brackets, min_resource, max_resource)?
    } else {
        1
    };
    Ok(HalvingRule {
        min_resource,
        max_resource,
        reduction_factor,
        min_samples,
        brackets,
    })
}

/// Reads `brackets`, by default every bracket that has a rung.
fn parse_brackets(
    section: &Section,
    max_brackets: u32,
    min_resource: u32,
    max_resource: u32,
) -> Result<u32, SpecError> {
    let path = section.key_path("brackets");
    match section.int("brackets", 1, i64::MAX)? {
        None => Ok(max_brackets),
        Some(value) if value <= i64::from(max_brackets) => Ok(value as u32),
        Some(value) => {
            let expected = format!(
                "an int from 1 to {max_brackets}, the brackets whose first rung \
                 min_resource * reduction_factor^bracket lies below max_resource \
                 ({min_resource} and {max_resource} here)"
            );
            Err(invalid(&path, &expected, &value.to_string()))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::spec::SweepSpec;

    /// Builds a valid spec of `epochs` epochs followed by `[early_stopping]` with `keys`.
    fn spec_text(epochs: u32, keys: &str) -> String {
        format!(
            "name = \"t\"\n[objective]\nmetric = \"val_accuracy\"\n\
             [task]\nmodel = \"mlp\"\ndataset = \"d.npz\"\nepochs = {epochs}\n\
             [early_stopping]\n{keys}"
        )
    }

    fn parse_rule(epochs: u32, keys: &str) -> EarlyStoppingSpec {
        let text = spec_text(epochs, keys);
        let spec = SweepSpec::parse(&text, Path::new("/"));
        let spec = spec.unwrap_or_else(|err| panic!("spec should parse: {err}\n{text}"));
        spec.early_stopping.expect("the spec has [early_stopping]")
    }

    fn parse_err(epochs: u32, keys: &str) -> String {
        let text = spec_text(epochs, keys);
        match SweepSpec::parse(&text, Path::new("/")) {
            Ok(spec) => panic!("spec should fail: {spec:?}\n{text}"),
            Err(err) => err.0,
        }
    }

    #[test]
    fn median_fills_defaults() {
        let rule = parse_rule(10, "method = \"median\"");
        let expected = MedianRule {
            grace_epochs: 1,
            min_samples: 3,
        };
        assert_eq!(rule, EarlyStoppingSpec::Median(expected));
    }

    #[test]
    fn asha_fills_defaults() {
        let rule = parse_rule(30, "method = \"asha\"");
        let expected = HalvingRule {
            min_resource: 1,
            max_resource: 30,
            reduction_factor: 3,
            min_samples: 3,
            brackets: 1,
        };
        assert_eq!(rule, EarlyStoppingSpec::Asha(expected));
    }

    #[test]
    fn hyperband_derives_brackets() {
        let keys = "method = \"hyperband\"\nmin_resource = 1\nmax_resource = 27\n\
                    reduction_factor = 3";
        let EarlyStoppingSpec::Hyperband(rule) = parse_rule(30, keys) else {
            panic!("expected hyperband");
        };
        assert_eq!(rule.brackets, 3);
        assert_eq!(rule.max_resource, 27);
    }

    #[test]
    fn hyperband_keeps_explicit_brackets() {
        let keys = "method = \"hyperband\"\nbrackets = 2\nmin_samples = 1";
        let EarlyStoppingSpec::Hyperband(rule) = parse_rule(30, keys) else {
            panic!("expected hyperband");
        };
        assert_eq!(rule.brackets, 2);
        assert_eq!(rule.min_samples, 1);
    }

    #[test]
    fn spec_without_section_has_no_rule() {
        let text = "name = \"t\"\n[objective]\nmetric = \"val_accuracy\"\n\
                    [task]\nmodel = \"mlp\"\ndataset = \"d.npz\"\n";
        let spec = SweepSpec::parse(text, Path::new("/")).unwrap();
        assert_eq!(spec.early_stopping, None);
    }

    #[test]
    fn invalid_sections_are_rejected() {
        let cases = [
            (
                10,
                "min_samples = 3",
                "missing early_stopping.method: expected one of \"median\", \"asha\", \
                 \"hyperband\"",
            ),
            (
                10,
                "method = \"successive_halving\"",
                "invalid early_stopping.method: expected one of \"median\", \"asha\", \
                 \"hyperband\", got \"successive_halving\"",
            ),
            (
                10,
                "method = \"asha\"\npatience = 2",
                "unknown key early_stopping.patience: expected one of method, grace_epochs, \
                 min_samples, min_resource, max_resource, reduction_factor, brackets",
            ),
            (
                10,
                "method = \"asha\"\ngrace_epochs = 2",
                "unknown key early_stopping.grace_epochs for method \"asha\": expected one of \
                 method, min_resource, max_resource, reduction_factor, min_samples",
            ),
            (
                10,
                "method = \"median\"\nbrackets = 2",
                "unknown key early_stopping.brackets for method \"median\": expected one of \
                 method, grace_epochs, min_samples",
            ),
            (
                1,
                "method = \"median\"",
                "invalid early_stopping: early stopping needs task.epochs of at least 2, got 1",
            ),
            (
                10,
                "method = \"median\"\ngrace_epochs = 10",
                "invalid early_stopping.grace_epochs: expected an int from 0 to 9, got 10",
            ),
            (
                10,
                "method = \"median\"\nmin_samples = 0",
                "invalid early_stopping.min_samples: expected an int from 1 to 100000, got 0",
            ),
            (
                10,
                "method = \"asha\"\nmin_resource = 10",
                "invalid early_stopping.min_resource: expected an int from 1 to 9, got 10",
            ),
            (
                10,
                "method = \"asha\"\nmin_resource = 3\nmax_resource = 3",
                "invalid early_stopping.max_resource: expected an int above \
                 early_stopping.min_resource (3) and at most task.epochs (10), got 3",
            ),
            (
                10,
                "method = \"asha\"\nmax_resource = 11",
                "invalid early_stopping.max_resource: expected an int above \
                 early_stopping.min_resource (1) and at most task.epochs (10), got 11",
            ),
            (
                10,
                "method = \"asha\"\nreduction_factor = 1",
                "invalid early_stopping.reduction_factor: expected an int from 2 to 1000, got 1",
            ),
            (
                10,
                "method = \"asha\"\nreduction_factor = 2.5",
                "invalid early_stopping.reduction_factor: expected an int from 2 to 1000, got \
                 2.5 (float)",
            ),
            (
                30,
                "method = \"hyperband\"\nbrackets = 5",
                "invalid early_stopping.brackets: expected an int from 1 to 4, the brackets \
                 whose first rung min_resource * reduction_factor^bracket lies below \
                 max_resource (1 and 30 here), got 5",
            ),
            (
                30,
                "method = \"hyperband\"\nbrackets = 0",
                "invalid early_stopping.brackets: expected an int >= 1, got 0",
            ),
        ];
        for (epochs, keys, expected) in cases {
            assert_eq!(parse_err(epochs, keys), expected, "{keys}");
        }
    }
}
