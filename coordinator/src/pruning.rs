//! Early stopping: whether a trial that just reported an epoch should stop, judged against the
//! objective curves of the other trials of its sweep. Pure, with no I/O.
//!
//! Every decision reads only stored trial histories, so a restarted coordinator that receives
//! the same report judges it the same way.

use std::collections::BTreeMap;

use crate::spec::{EarlyStoppingSpec, Goal, HalvingRule, MedianRule};

/// A trial's objective values by epoch, from its metric history. Epochs whose objective is
/// missing or not finite are left out.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Curve {
    /// Position of the trial in the search order, which picks its Hyperband bracket.
    pub index: u32,
    pub values: BTreeMap<u32, f64>,
}

/// One decision on one epoch report, with the figures it was taken on.
#[derive(Debug, Clone, PartialEq)]
pub struct Judgement {
    pub stop: bool,
    pub epoch: u32,
    /// The rung epoch of ASHA and Hyperband; `None` for the median rule.
    pub rung: Option<u32>,
    /// The Hyperband bracket; `None` for the median rule and ASHA.
    pub bracket: Option<u32>,
    /// Results of other trials the decision compared against.
    pub num_samples: usize,
    /// The value the trial had to match or beat: the median, or the cut-off of the top 1/eta.
    pub threshold: f64,
    /// The trial's value: its best so far for the median rule, its value at the rung otherwise.
    pub value: f64,
}

impl Judgement {
    /// Describes a stop decision for the trial's reason and the worker.
    pub fn reason(&self) -> String {
        let against = match (self.rung, self.bracket) {
            (Some(rung), Some(bracket)) => format!("rung {rung} of bracket {bracket}"),
            (Some(rung), None) => format!("rung {rung}"),
            _ => "the median".to_string(),
        };
        format!(
            "pruned at epoch {}: objective {:.6} is worse than {:.6} at {against} ({} other trials)",
            self.epoch, self.value, self.threshold, self.num_samples
        )
    }
}

/// Judges `trial` after it reported `epoch`, or returns `None` when the rule takes no decision
/// there: inside the grace epochs, off a rung, with fewer samples than `min_samples`, or when
/// the trial's own objective value is missing.
pub fn judge(
    rule: &EarlyStoppingSpec,
    goal: Goal,
    trial: &Curve,
    others: &[Curve],
    epoch: u32,
) -> Option<Judgement> {
    match rule {
        EarlyStoppingSpec::Median(median) => judge_median(median, goal, trial, others, epoch),
        EarlyStoppingSpec::Asha(halving) => {
            judge_halving(halving, None, goal, trial, others, epoch)
        }
        EarlyStoppingSpec::Hyperband(halving) => {
            let bracket = bracket_of(halving, trial.index);
            judge_halving(halving, Some(bracket), goal, trial, others, epoch)
        }
    }
}

/// Assigns a trial to a Hyperband bracket by its index, round-robin, so every bracket gets
/// the same share of trials whatever order they start in.
pub fn bracket_of(rule: &HalvingRule, trial_index: u32) -> u32 {
    trial_index % rule.brackets.max(1)
}

/// Applies the median stopping rule: stop when the trial's best value up to `epoch` is worse
/// than the median of the other trials' running averages up to `epoch`. Only trials that reported
/// `epoch` count, and a value equal to the median goes on.
fn judge_median(
    rule: &MedianRule,
    goal: Goal,
    trial: &Curve,
    others: &[Curve],
    epoch: u32,
) -> Option<Judgement> {
    if epoch <= rule.grace_epochs {
        return None;
    }
    let value = best_up_to(goal, trial, epoch)?;
    let averages: Vec<f64> = others
        .iter()
        .filter(|other| other.values.contains_key(&epoch))
        .map(|other| running_average(other, epoch))
        .collect();
    if averages.len() < rule.min_samples as usize {
        return None;
    }
    let threshold = median(averages.clone());
    Some(Judgement {
        stop: is_better(goal, threshold, value),
        epoch,
        rung: None,
        bracket: None,
        num_samples: averages.len(),
        threshold,
        value,
    })
}

/// Asynchronous successive halving: at a rung, the trial goes on only if its value is among
/// the best `max(1, n / eta)` of the n values recorded at that rung, its own included. Only
/// trials of the same bracket compete.
fn judge_halving(
    rule: &HalvingRule,
    bracket: Option<u32>,
    goal: Goal,
    trial: &Curve,
    others: &[Curve],
    epoch: u32,
) -> Option<Judgement> {
    if !rule.rungs(bracket.unwrap_or(0)).contains(&epoch) {
        return None;
    }
    let value = *trial.values.get(&epoch)?;
    let mut recorded: Vec<f64> = others
        .iter()
        .filter(|other| bracket.is_none_or(|b| bracket_of(rule, other.index) == b))
        .filter_map(|other| other.values.get(&epoch).copied())
        .collect();
    let num_samples = recorded.len();
    if num_samples < rule.min_samples as usize {
        return None;
    }
    recorded.push(value);
    recorded.sort_by(|a, b| best_first(goal, *a, *b));
    let num_kept = (recorded.len() / rule.reduction_factor as usize).max(1);
    let threshold = recorded[num_kept - 1];
    Some(Judgement {
        stop: is_better(goal, threshold, value),
        epoch,
        rung: Some(epoch),
        bracket,
        num_samples,
        threshold,
        value,
    })
}

/// Returns whether `a` is strictly better than `b` for the goal.
fn is_better(goal: Goal, a: f64, b: f64) -> bool {
    match goal {
        Goal::Maximize => a > b,
        Goal::Minimize => a < b,
    }
}

fn best_first(goal: Goal, a: f64, b: f64) -> std::cmp::Ordering {
    match goal {
        Goal::Maximize => b.total_cmp(&a),
        Goal::Minimize => a.total_cmp(&b),
    }
}

fn best_up_to(goal: Goal, curve: &Curve, epoch: u32) -> Option<f64> {
    let values = curve.values.range(..=epoch).map(|(_, value)| *value);
    values.min_by(|a, b| best_first(goal, *a, *b))
}

fn running_average(curve: &Curve, epoch: u32) -> f64 {
    let values: Vec<f64> = curve.values.range(..=epoch).map(|(_, v)| *v).collect();
    values.iter().sum::<f64>() / values.len() as f64
}

/// Returns the median; the mean of the two middle values for an even count. `values` is not
/// empty because `min_samples` is at least 1.
fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let middle = values.len() / 2;
    if values.len() % 2 == 1 {
        values[middle]
    } else {
        (values[middle - 1] + values[middle]) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn curve(index: u32, values: &[f64]) -> Curve {
        let values = values
            .iter()
            .enumerate()
            .map(|(i, v)| (i as u32 + 1, *v))
            .collect();
        Curve { index, values }
    }

    fn median_rule(grace_epochs: u32, min_samples: u32) -> EarlyStoppingSpec {
        EarlyStoppingSpec::Median(MedianRule {
            grace_epochs,
            min_samples,
        })
    }

    fn halving(min_resource: u32, max_resource: u32, eta: u32, min_samples: u32) -> HalvingRule {
        HalvingRule {
            min_resource,
            max_resource,
            reduction_factor: eta,
            min_samples,
            brackets: 1,
        }
    }

    /// Three trials with running averages 0.375, 0.625 and 0.875 at epoch 2, all exact in
    /// binary so that ties compare equal.
    fn three_others() -> Vec<Curve> {
        vec![
            curve(0, &[0.25, 0.5]),
            curve(1, &[0.5, 0.75]),
            curve(2, &[0.75, 1.0]),
        ]
    }

    #[test]
    fn median_stops_below_median_when_maximizing() {
        let rule = median_rule(1, 3);
        let trial = curve(3, &[0.25, 0.5]);
        let judgement = judge(&rule, Goal::Maximize, &trial, &three_others(), 2).unwrap();
        assert!(judgement.stop);
        assert_eq!(judgement.threshold, 0.625);
        assert_eq!(judgement.value, 0.5);
        assert_eq!(judgement.num_samples, 3);
    }

    #[test]
    fn median_keeps_above_median_when_maximizing() {
        let trial = curve(3, &[0.25, 0.75]);
        let judgement = judge(
            &median_rule(1, 3),
            Goal::Maximize,
            &trial,
            &three_others(),
            2,
        );
        assert!(!judgement.unwrap().stop);
    }

    #[test]
    fn median_follows_minimize_goal() {
        // As losses, 0.5 is better than the median running average 0.625 and 0.75 is worse.
        let trial = curve(3, &[0.9, 0.5]);
        let judgement = judge(
            &median_rule(1, 3),
            Goal::Minimize,
            &trial,
            &three_others(),
            2,
        );
        assert!(!judgement.unwrap().stop);
        let trial = curve(3, &[0.9, 0.75]);
        let judgement = judge(
            &median_rule(1, 3),
            Goal::Minimize,
            &trial,
            &three_others(),
            2,
        );
        assert!(judgement.unwrap().stop);
    }

    #[test]
    fn median_uses_best_value_so_far() {
        // Epoch 2 alone (0.125) is below the median 0.625, but epoch 1 (0.9) is the best so far.
        let trial = curve(3, &[0.9, 0.125]);
        let judgement = judge(
            &median_rule(1, 3),
            Goal::Maximize,
            &trial,
            &three_others(),
            2,
        );
        let judgement = judgement.unwrap();
        assert_eq!(judgement.value, 0.9);
        assert!(!judgement.stop);
    }

    #[test]
    fn median_tie_goes_on() {
        let trial = curve(3, &[0.625, 0.625]);
        let judgement = judge(
            &median_rule(1, 3),
            Goal::Maximize,
            &trial,
            &three_others(),
            2,
        );
        let judgement = judgement.unwrap();
        assert_eq!(judgement.threshold, 0.625);
        assert!(!judgement.stop);
    }

    #[test]
    fn median_of_even_count_is_middle_mean() {
        let mut others = three_others();
        others.push(curve(4, &[0.75, 1.25]));
        let trial = curve(5, &[0.7, 0.7]);
        let judgement = judge(&median_rule(1, 4), Goal::Maximize, &trial, &others, 2).unwrap();
        assert_eq!(judgement.threshold, 0.75);
        assert!(judgement.stop);
    }

    #[test]
    fn median_waits_for_min_samples() {
        let trial = curve(3, &[0.0, 0.0]);
        let others = three_others();
        assert_eq!(
            judge(&median_rule(1, 4), Goal::Maximize, &trial, &others, 2),
            None
        );
        // Trials that have not reached epoch 2 are not samples at epoch 2.
        let short = vec![curve(0, &[0.9]), curve(1, &[0.9]), curve(2, &[0.9, 0.9])];
        assert_eq!(
            judge(&median_rule(1, 2), Goal::Maximize, &trial, &short, 2),
            None
        );
    }

    #[test]
    fn median_skips_grace_epochs() {
        let trial = curve(3, &[0.0, 0.0]);
        let others = three_others();
        assert_eq!(
            judge(&median_rule(2, 3), Goal::Maximize, &trial, &others, 2),
            None
        );
        assert!(judge(&median_rule(1, 3), Goal::Maximize, &trial, &others, 2).is_some());
    }

    #[test]
    fn rungs_grow_by_reduction_factor() {
        assert_eq!(halving(1, 30, 3, 1).rungs(0), vec![1, 3, 9, 27]);
        assert_eq!(halving(1, 27, 3, 1).rungs(0), vec![1, 3, 9]);
        assert_eq!(halving(2, 20, 2, 1).rungs(0), vec![2, 4, 8, 16]);
        assert_eq!(halving(1, 30, 3, 1).rungs(2), vec![9, 27]);
        assert!(halving(1, 30, 3, 1).rungs(4).is_empty());
    }

    #[test]
    fn max_brackets_counts_brackets_with_rungs() {
        assert_eq!(HalvingRule::max_brackets(1, 30, 3), 4);
        assert_eq!(HalvingRule::max_brackets(1, 27, 3), 3);
        assert_eq!(HalvingRule::max_brackets(1, 2, 3), 1);
        assert_eq!(HalvingRule::max_brackets(4, 30, 2), 3);
    }

    #[test]
    fn asha_keeps_top_third_at_rung() {
        let rule = EarlyStoppingSpec::Asha(halving(1, 10, 3, 2));
        // Five others at rung 3 and the trial make six values, so the best two go on.
        let others: Vec<Curve> = [0.1, 0.2, 0.3, 0.4, 0.9]
            .iter()
            .enumerate()
            .map(|(i, v)| curve(i as u32, &[0.0, 0.0, *v]))
            .collect();
        let second = curve(9, &[0.0, 0.0, 0.5]);
        let judgement = judge(&rule, Goal::Maximize, &second, &others, 3).unwrap();
        assert!(!judgement.stop);
        assert_eq!(judgement.threshold, 0.5);
        assert_eq!(judgement.rung, Some(3));
        let third = curve(9, &[0.0, 0.0, 0.35]);
        let judgement = judge(&rule, Goal::Maximize, &third, &others, 3).unwrap();
        assert!(judgement.stop);
        assert_eq!(judgement.threshold, 0.4);
        assert_eq!(judgement.num_samples, 5);
    }

    #[test]
    fn asha_follows_minimize_goal() {
        let rule = EarlyStoppingSpec::Asha(halving(1, 10, 2, 1));
        let others = vec![curve(0, &[0.5])];
        let lower = judge(&rule, Goal::Minimize, &curve(1, &[0.4]), &others, 1).unwrap();
        assert!(!lower.stop);
        let higher = judge(&rule, Goal::Minimize, &curve(1, &[0.6]), &others, 1).unwrap();
        assert!(higher.stop);
        let higher = judge(&rule, Goal::Maximize, &curve(1, &[0.6]), &others, 1).unwrap();
        assert!(!higher.stop);
    }

    #[test]
    fn asha_judges_only_at_rungs() {
        let rule = EarlyStoppingSpec::Asha(halving(1, 10, 3, 1));
        let others = vec![curve(0, &[0.9, 0.9, 0.9, 0.9]), curve(1, &[0.9; 4])];
        let trial = curve(2, &[0.0; 4]);
        assert!(judge(&rule, Goal::Maximize, &trial, &others, 1).is_some());
        assert_eq!(judge(&rule, Goal::Maximize, &trial, &others, 2), None);
        assert!(judge(&rule, Goal::Maximize, &trial, &others, 3).is_some());
        assert_eq!(judge(&rule, Goal::Maximize, &trial, &others, 4), None);
    }

    #[test]
    fn asha_waits_for_min_samples() {
        let rule = EarlyStoppingSpec::Asha(halving(1, 10, 3, 3));
        let others = vec![curve(0, &[0.9]), curve(1, &[0.9])];
        let trial = curve(2, &[0.0]);
        assert_eq!(judge(&rule, Goal::Maximize, &trial, &others, 1), None);
    }

    #[test]
    fn asha_tie_at_cutoff_goes_on() {
        let rule = EarlyStoppingSpec::Asha(halving(1, 10, 3, 2));
        let others = vec![curve(0, &[0.5]), curve(1, &[0.4])];
        let judgement = judge(&rule, Goal::Maximize, &curve(2, &[0.5]), &others, 1).unwrap();
        assert!(!judgement.stop);
    }

    #[test]
    fn asha_without_own_value_takes_no_decision() {
        let rule = EarlyStoppingSpec::Asha(halving(1, 10, 3, 1));
        let others = vec![curve(0, &[0.5])];
        let trial = Curve {
            index: 1,
            values: BTreeMap::new(),
        };
        assert_eq!(judge(&rule, Goal::Maximize, &trial, &others, 1), None);
    }

    #[test]
    fn hyperband_assigns_brackets_round_robin() {
        let rule = HalvingRule {
            brackets: 3,
            ..halving(1, 30, 3, 1)
        };
        let brackets: Vec<u32> = (0..7).map(|index| bracket_of(&rule, index)).collect();
        assert_eq!(brackets, vec![0, 1, 2, 0, 1, 2, 0]);
    }

    #[test]
    fn hyperband_compares_within_bracket() {
        let rule = EarlyStoppingSpec::Hyperband(HalvingRule {
            brackets: 2,
            ..halving(1, 30, 3, 1)
        });
        // Trial 1 is in bracket 1, whose first rung is epoch 3. Only trial 3 shares it.
        let values = [0.1, 0.2, 0.3];
        let others = vec![curve(0, &[0.9; 3]), curve(2, &[0.9; 3]), curve(3, &values)];
        let trial = curve(1, &[0.0, 0.0, 0.15]);
        assert_eq!(judge(&rule, Goal::Maximize, &trial, &others, 1), None);
        let judgement = judge(&rule, Goal::Maximize, &trial, &others, 3).unwrap();
        assert_eq!(judgement.num_samples, 1);
        assert_eq!(judgement.bracket, Some(1));
        assert_eq!(judgement.threshold, 0.3);
        assert!(judgement.stop);
    }
}
