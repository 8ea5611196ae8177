//! Ensemble selection from a library of trained trials (Caruana, Niculescu-Mizil, Crew and
//! Ksikes, "Ensemble Selection from Libraries of Models", ICML 2004): greedy forward selection
//! with replacement over validation probabilities, with sorted initialisation.

use std::cmp::Ordering;

/// Lower bound on the label's probability in the log loss, so a confidently wrong row costs
/// at most -ln(1e-7), about 16.1, instead of infinity.
const MIN_PROBABILITY: f64 = 1e-7;

/// The metric ensemble selection optimises on the validation split.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SelectionMetric {
    /// Fraction of rows whose most probable class is the label; higher is better.
    Accuracy,
    /// Mean negative log-likelihood of the label; lower is better.
    Loss,
    /// The unweighted mean over classes of F1, over the classes that occur as a label or a
    /// prediction; higher is better.
    MacroF1,
}

/// Class probabilities of one data split, row-major `num_rows x num_classes`, with labels.
#[derive(Debug, Clone, PartialEq)]
pub struct Predictions {
    pub num_classes: usize,
    pub probabilities: Vec<f32>,
    pub labels: Vec<i64>,
}

/// The outcome of selection: how often each candidate was picked.
#[derive(Debug, Clone, PartialEq)]
pub struct Selection {
    /// One count per candidate, in the candidates' order; they sum to the ensemble size.
    pub counts: Vec<u32>,
    /// The selection metric of the blended validation predictions.
    pub val_score: f64,
}

/// Candidates that cannot be ensembled together.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EnsembleError {
    /// The candidate list is empty.
    #[error("no candidates to select an ensemble from")]
    NoCandidates,
    /// A candidate has an invalid shape, a label outside its classes or a non-finite
    /// probability, or differs from candidate 0 in its classes, rows or labels.
    #[error("invalid candidate {index}: {detail}")]
    Mismatch { index: usize, detail: String },
    /// The ensemble size or the sorted initialisation size is out of range.
    #[error(
        "invalid ensemble size {size} with init_size {init_size}: expected 1 <= init_size <= size"
    )]
    InvalidSize { size: u32, init_size: u32 },
}

/// Selects an ensemble of `size` picks from `candidates` (validation predictions).
///
/// Sorted initialisation picks the `init_size` best candidates by their own score, each once.
/// When `init_size` exceeds the number of candidates, every candidate starts once. Greedy
/// rounds then add, with replacement, the candidate whose addition gives the best blend, until
/// the counts sum to `size`. A round adds a candidate even when every addition makes the blend
/// worse, so the result always has exactly `size` picks.
///
/// Scores are compared exactly: accuracy is the number of correct rows over the number of
/// rows, so blends with equally many correct rows tie. Ties, in sorted initialisation and in
/// every round, go to the lower candidate position, so callers order candidates by their
/// individual validation score, best first, then by trial index.
///
/// # Errors
///
/// Returns `NoCandidates` for an empty list and `InvalidSize` unless
/// `1 <= init_size <= size`. Returns `Mismatch` for the first candidate that lacks a class or
/// a row, does not hold one finite probability per row and class, has a label outside
/// `0..num_classes`, or differs from candidate 0 in its classes, rows or labels. A candidate
/// with NaN or infinite probabilities is rejected, not skipped, so callers leave out diverged
/// trials before selection.
pub fn select_ensemble(
    candidates: &[&Predictions],
    metric: SelectionMetric,
    size: u32,
    init_size: u32,
) -> Result<Selection, EnsembleError> {
    if candidates.is_empty() {
        return Err(EnsembleError::NoCandidates);
    }
    if init_size == 0 || init_size > size {
        return Err(EnsembleError::InvalidSize { size, init_size });
    }
    validate_candidates(candidates)?;

    let mut ensemble = RunningBlend::new(candidates);
    for index in sorted_initialisation(candidates, metric, init_size) {
        ensemble.add(index);
    }
    while ensemble.num_picks < size {
        let index = ensemble.best_addition(metric);
        ensemble.add(index);
    }

    let val_score = metric.score(&blend(candidates, &ensemble.counts));
    Ok(Selection {
        counts: ensemble.counts,
        val_score,
    })
}

/// Averages predictions weighted by `counts` (members with count 0 are left out).
///
/// Each member's weight is its count over the sum of the counts. The labels are copied from
/// the first member with a count above 0, because members are expected to share their labels
/// (`select_ensemble` checks this).
///
/// # Panics
///
/// Panics if `counts` and `predictions` differ in length, if every count is 0, or if the
/// members with a count above 0 differ in `num_classes` or in the number of probabilities.
pub fn blend(predictions: &[&Predictions], counts: &[u32]) -> Predictions {
    assert_eq!(
        predictions.len(),
        counts.len(),
        "blend expects one count per prediction"
    );
    let members: Vec<(&Predictions, u32)> = predictions
        .iter()
        .copied()
        .zip(counts.iter().copied())
        .filter(|&(_, count)| count > 0)
        .collect();
    let Some(&(first, _)) = members.first() else {
        panic!("blend expects at least one count above 0");
    };
    let total: f64 = members.iter().map(|&(_, count)| f64::from(count)).sum();

    let mut sums = vec![0.0_f64; first.probabilities.len()];
    for &(member, count) in &members {
        assert!(
            member.num_classes == first.num_classes && member.probabilities.len() == sums.len(),
            "blend members must have the same shape"
        );
        for (sum, &probability) in sums.iter_mut().zip(&member.probabilities) {
            *sum += f64::from(count) * f64::from(probability);
        }
    }

    Predictions {
        num_classes: first.num_classes,
        probabilities: sums.iter().map(|&sum| (sum / total) as f32).collect(),
        labels: first.labels.clone(),
    }
}

/// Returns the fraction of rows whose arg-max class equals the label.
///
/// When several classes share a row's highest probability, the lowest class id is the
/// prediction. Returns NaN for malformed predictions: no class, no row, a probability count
/// other than rows x `num_classes`, or a label outside `0..num_classes`.
pub fn accuracy(predictions: &Predictions) -> f64 {
    SelectionMetric::Accuracy.score(predictions)
}

/// Returns the mean negative log-likelihood of the labels, probabilities clamped to >= 1e-7.
///
/// Returns NaN for malformed predictions: no class, no row, a probability count other than
/// rows x `num_classes`, or a label outside `0..num_classes`.
pub fn log_loss(predictions: &Predictions) -> f64 {
    SelectionMetric::Loss.score(predictions)
}

/// Returns the macro-averaged F1 of the arg-max classes, as scikit-learn's
/// `f1_score(average="macro")` over the classes that occur as a label or a prediction.
///
/// Returns NaN for malformed predictions, as [`accuracy`] does.
pub fn macro_f1(predictions: &Predictions) -> f64 {
    SelectionMetric::MacroF1.score(predictions)
}

impl SelectionMetric {
    /// Scores `predictions` alone, or returns NaN when they are malformed.
    fn score(self, predictions: &Predictions) -> f64 {
        if validate_shape(predictions).is_err() {
            return f64::NAN;
        }
        let mut scores = RowScores::new(self);
        for (row, label) in rows(predictions) {
            scores.add_row(row, label);
        }
        scores.mean()
    }

    /// Returns whether `score` is strictly better than `other`, so equal scores are not.
    fn is_better(self, score: f64, other: f64) -> bool {
        match self {
            SelectionMetric::Accuracy | SelectionMetric::MacroF1 => score > other,
            SelectionMetric::Loss => score < other,
        }
    }
}

/// The picks made so far and the element-wise sum of the picked candidates' probabilities.
///
/// Keeping the sum makes scoring one more pick cost one pass over a candidate's probabilities.
/// The sum is in f64 and every blended value is rounded to f32 before scoring, as `blend`
/// does. The values match `blend` unless adding in pick order instead of candidate order
/// changes the rounding of the f64 sum.
struct RunningBlend<'a> {
    candidates: &'a [&'a Predictions],
    counts: Vec<u32>,
    num_picks: u32,
    sums: Vec<f64>,
}

impl<'a> RunningBlend<'a> {
    fn new(candidates: &'a [&'a Predictions]) -> Self {
        RunningBlend {
            candidates,
            counts: vec![0; candidates.len()],
            num_picks: 0,
            sums: vec![0.0; candidates[0].probabilities.len()],
        }
    }

    fn add(&mut self, index: usize) {
        self.counts[index] += 1;
        self.num_picks += 1;
        for (sum, &probability) in self
            .sums
            .iter_mut()
            .zip(&self.candidates[index].probabilities)
        {
            *sum += f64::from(probability);
        }
    }

    /// Returns the position of the candidate whose addition scores best. Ties go to the lower
    /// position.
    fn best_addition(&self, metric: SelectionMetric) -> usize {
        let mut best_index = 0;
        let mut best_score = self.score_with(metric, self.candidates[0]);
        for (index, candidate) in self.candidates.iter().enumerate().skip(1) {
            let score = self.score_with(metric, candidate);
            if metric.is_better(score, best_score) {
                best_index = index;
                best_score = score;
            }
        }
        best_index
    }

    /// Scores the blend of the current picks plus one more pick of `candidate`.
    fn score_with(&self, metric: SelectionMetric, candidate: &Predictions) -> f64 {
        let num_classes = candidate.num_classes;
        let divisor = f64::from(self.num_picks + 1);
        let mut blended_row = vec![0.0_f32; num_classes];
        let mut scores = RowScores::new(metric);
        for (sums, (row, label)) in self.sums.chunks_exact(num_classes).zip(rows(candidate)) {
            for (value, (&sum, &probability)) in blended_row.iter_mut().zip(sums.iter().zip(row)) {
                *value = ((sum + f64::from(probability)) / divisor) as f32;
            }
            scores.add_row(&blended_row, label);
        }
        scores.mean()
    }
}

/// A running total of a metric over rows, shared by the public metrics and the greedy rounds
/// so that both score a row the same way.
struct RowScores {
    metric: SelectionMetric,
    num_rows: usize,
    num_correct: usize,
    loss_sum: f64,
    /// Per class: true positives, rows with this label, rows predicted as this class.
    class_counts: Vec<[u64; 3]>,
}

impl RowScores {
    fn new(metric: SelectionMetric) -> Self {
        RowScores {
            metric,
            num_rows: 0,
            num_correct: 0,
            loss_sum: 0.0,
            class_counts: Vec::new(),
        }
    }

    fn add_row(&mut self, row: &[f32], label: usize) {
        self.num_rows += 1;
        match self.metric {
            SelectionMetric::Accuracy => {
                if predicted_class(row) == label {
                    self.num_correct += 1;
                }
            }
            SelectionMetric::Loss => self.loss_sum += row_log_loss(row, label),
            SelectionMetric::MacroF1 => {
                if self.class_counts.len() < row.len() {
                    self.class_counts.resize(row.len(), [0; 3]);
                }
                let predicted = predicted_class(row);
                if predicted == label {
                    self.class_counts[label][0] += 1;
                }
                self.class_counts[label][1] += 1;
                self.class_counts[predicted][2] += 1;
            }
        }
    }

    fn mean(&self) -> f64 {
        let num_rows = self.num_rows as f64;
        match self.metric {
            SelectionMetric::Accuracy => self.num_correct as f64 / num_rows,
            SelectionMetric::Loss => self.loss_sum / num_rows,
            SelectionMetric::MacroF1 => {
                // F1 = 2 * precision * recall / (precision + recall) = 2 tp / (labelled +
                // predicted), which is 0 when tp is 0.
                let present = self.class_counts.iter().filter(|c| c[1] + c[2] > 0);
                let (num_present, f1_sum) = present.fold((0, 0.0), |(n, sum), c| {
                    (n + 1, sum + 2.0 * c[0] as f64 / (c[1] + c[2]) as f64)
                });
                if num_present == 0 {
                    f64::NAN
                } else {
                    f1_sum / f64::from(num_present)
                }
            }
        }
    }
}

/// Returns the rows of `predictions` with their labels, which `validate_shape` has accepted.
fn rows(predictions: &Predictions) -> impl Iterator<Item = (&[f32], usize)> {
    predictions
        .probabilities
        .chunks_exact(predictions.num_classes)
        .zip(predictions.labels.iter().map(|&label| label as usize))
}

/// Returns the arg-max class of a row. Among equal probabilities the lowest class id wins.
fn predicted_class(row: &[f32]) -> usize {
    let mut best_class = 0;
    for (class, &probability) in row.iter().enumerate().skip(1) {
        if probability > row[best_class] {
            best_class = class;
        }
    }
    best_class
}

fn row_log_loss(row: &[f32], label: usize) -> f64 {
    let clamped = f64::from(row[label]).max(MIN_PROBABILITY);
    -clamped.ln()
}

/// Sorts candidates by their own score, best first and ties by position, and returns the
/// positions of the first `init_size`.
fn sorted_initialisation(
    candidates: &[&Predictions],
    metric: SelectionMetric,
    init_size: u32,
) -> Vec<usize> {
    let scores: Vec<f64> = candidates
        .iter()
        .map(|candidate| metric.score(candidate))
        .collect();
    let mut order: Vec<usize> = (0..candidates.len()).collect();
    order.sort_by(|&a, &b| {
        let by_score = if metric.is_better(scores[a], scores[b]) {
            Ordering::Less
        } else if metric.is_better(scores[b], scores[a]) {
            Ordering::Greater
        } else {
            Ordering::Equal
        };
        by_score.then(a.cmp(&b))
    });
    order.truncate(init_size as usize);
    order
}

fn validate_candidates(candidates: &[&Predictions]) -> Result<(), EnsembleError> {
    let first = candidates[0];
    validate_shape(first).map_err(|detail| EnsembleError::Mismatch { index: 0, detail })?;
    for (index, candidate) in candidates.iter().enumerate() {
        if index > 0 {
            validate_against_first(candidate, first)
                .map_err(|detail| EnsembleError::Mismatch { index, detail })?;
        }
        validate_finite(candidate).map_err(|detail| EnsembleError::Mismatch { index, detail })?;
    }
    Ok(())
}

/// Checks that `predictions` has a class, a row, one probability per row and class, and labels
/// in `0..num_classes`.
fn validate_shape(predictions: &Predictions) -> Result<(), String> {
    if predictions.num_classes == 0 {
        return Err("num_classes is 0, expected at least 1".to_string());
    }
    if predictions.labels.is_empty() {
        return Err("no rows, expected at least 1".to_string());
    }
    validate_probability_count(predictions)?;
    let class_range = 0..predictions.num_classes as i64;
    if let Some((row, label)) = predictions
        .labels
        .iter()
        .enumerate()
        .find(|(_, label)| !class_range.contains(label))
    {
        return Err(format!(
            "label {label} at row {row} is outside 0..{}",
            predictions.num_classes
        ));
    }
    Ok(())
}

fn validate_against_first(candidate: &Predictions, first: &Predictions) -> Result<(), String> {
    if candidate.num_classes != first.num_classes {
        return Err(format!(
            "num_classes is {}, expected {} as in candidate 0",
            candidate.num_classes, first.num_classes
        ));
    }
    if candidate.labels.len() != first.labels.len() {
        return Err(format!(
            "{} rows, expected {} as in candidate 0",
            candidate.labels.len(),
            first.labels.len()
        ));
    }
    validate_probability_count(candidate)?;
    let differing_label = candidate
        .labels
        .iter()
        .zip(&first.labels)
        .enumerate()
        .find(|(_, (label, expected))| label != expected);
    if let Some((row, (label, expected))) = differing_label {
        return Err(format!(
            "label at row {row} is {label}, expected {expected} as in candidate 0"
        ));
    }
    Ok(())
}

fn validate_probability_count(candidate: &Predictions) -> Result<(), String> {
    let num_rows = candidate.labels.len();
    let expected = num_rows * candidate.num_classes;
    if candidate.probabilities.len() != expected {
        return Err(format!(
            "{} probabilities, expected {num_rows} rows x {} classes = {expected}",
            candidate.probabilities.len(),
            candidate.num_classes
        ));
    }
    Ok(())
}

fn validate_finite(candidate: &Predictions) -> Result<(), String> {
    let non_finite = candidate
        .probabilities
        .iter()
        .position(|probability| !probability.is_finite());
    match non_finite {
        Some(position) => Err(format!(
            "probability at row {}, class {} is {}, expected a finite value",
            position / candidate.num_classes,
            position % candidate.num_classes,
            candidate.probabilities[position]
        )),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LABELS: [i64; 4] = [0, 1, 0, 1];

    /// Builds two-class predictions from each row's probability of its label.
    #[test]
    fn macro_f1_matches_hand_computation() {
        // Labels 0,0,1,2 predicted as 0,1,1,2: F1 of class 0 is 2/3, class 1 2/3, class 2 1.
        let predictions = Predictions {
            num_classes: 3,
            probabilities: vec![
                0.8, 0.1, 0.1, //
                0.2, 0.7, 0.1, //
                0.1, 0.8, 0.1, //
                0.1, 0.1, 0.8,
            ],
            labels: vec![0, 0, 1, 2],
        };
        let expected = (2.0 / 3.0 + 2.0 / 3.0 + 1.0) / 3.0;
        assert!((macro_f1(&predictions) - expected).abs() < 1e-12);
    }

    fn binary(labels: &[i64], label_probabilities: &[f32]) -> Predictions {
        let probabilities = labels
            .iter()
            .zip(label_probabilities)
            .flat_map(|(&label, &p)| {
                if label == 0 {
                    [p, 1.0 - p]
                } else {
                    [1.0 - p, p]
                }
            })
            .collect();
        Predictions {
            num_classes: 2,
            probabilities,
            labels: labels.to_vec(),
        }
    }

    /// Builds candidates A, B and C: A is right on rows 0-1, B on rows 2-3 and C on rows 0-2.
    ///
    /// Alone, A has accuracy 1/2 and loss 1.1836, B 1/2 and 1.1065, C 3/4 and 0.4610.
    fn three_candidates() -> [Predictions; 3] {
        [
            binary(&LABELS, &[0.75, 0.75, 0.125, 0.125]),
            binary(&LABELS, &[0.125, 0.125, 0.875, 0.875]),
            binary(&LABELS, &[0.75, 0.75, 0.75, 0.375]),
        ]
    }

    fn select(
        candidates: &[Predictions],
        metric: SelectionMetric,
        size: u32,
        init_size: u32,
    ) -> Result<Selection, EnsembleError> {
        let refs: Vec<&Predictions> = candidates.iter().collect();
        select_ensemble(&refs, metric, size, init_size)
    }

    fn mismatch(index: usize, detail: &str) -> EnsembleError {
        EnsembleError::Mismatch {
            index,
            detail: detail.to_string(),
        }
    }

    #[test]
    fn select_accuracy_hand_worked() {
        // C starts (3/4). Round 2: C+A and C+B are right on 2 rows, C+C on 3, so C.
        // Round 3: C+C+B has label probabilities 0.54, 0.54, 0.79, 0.54 and is right on
        // all 4 rows, while C+C+A and C+C+C are right on 3.
        let selection = select(&three_candidates(), SelectionMetric::Accuracy, 3, 1).unwrap();
        assert_eq!(selection.counts, vec![0, 1, 2]);
        assert_eq!(selection.val_score, 1.0);
    }

    #[test]
    fn select_loss_hand_worked() {
        // C starts (0.4610). Round 2: C+C 0.4610, C+B 0.5828, C+A 0.6971. Round 3: C+C+C
        // 0.4610, C+C+B 0.5182, C+C+A 0.6052. Accuracy picks B in round 3, loss does not.
        let candidates = three_candidates();
        let selection = select(&candidates, SelectionMetric::Loss, 3, 1).unwrap();
        assert_eq!(selection.counts, vec![0, 0, 3]);
        assert_eq!(selection.val_score, log_loss(&candidates[2]));
    }

    #[test]
    fn select_init_two_adds_runner_up() {
        // C and B, the two best alone, start. Round 3: C+B+C 0.5182, C+B+A 0.6363,
        // C+B+B 0.6811, so C.
        let selection = select(&three_candidates(), SelectionMetric::Loss, 3, 2).unwrap();
        assert_eq!(selection.counts, vec![0, 1, 2]);
    }

    #[test]
    fn select_init_size_above_candidates() {
        // All three start once. Round 4: adding C gives 0.5848, B 0.6625, A 0.6953. Round 5:
        // adding C gives 0.5566, B 0.6059, A 0.6413.
        let selection = select(&three_candidates(), SelectionMetric::Loss, 5, 4).unwrap();
        assert_eq!(selection.counts, vec![1, 1, 3]);
    }

    #[test]
    fn select_dominant_candidate_fills_every_round() {
        // D gives every label 0.875. Blending in A or B lowers some label probability and
        // raises none above 0.875, so every round picks D again.
        let [a, b, _] = three_candidates();
        let dominant = binary(&LABELS, &[0.875; 4]);
        let selection = select(&[a, dominant, b], SelectionMetric::Loss, 5, 1).unwrap();
        assert_eq!(selection.counts, vec![0, 5, 0]);
    }

    #[test]
    fn select_ties_take_lower_position() {
        let [_, _, c] = three_candidates();
        for metric in [SelectionMetric::Accuracy, SelectionMetric::Loss] {
            let selection = select(&[c.clone(), c.clone()], metric, 3, 1).unwrap();
            assert_eq!(selection.counts, vec![3, 0], "metric {metric:?}");
        }
    }

    #[test]
    fn select_init_tie_takes_lower_position() {
        // Both are right on 2 of 4 rows, so whichever comes first starts.
        let first_half = binary(&LABELS, &[0.75, 0.75, 0.25, 0.25]);
        let second_half = binary(&LABELS, &[0.25, 0.25, 0.75, 0.75]);
        let forward = [first_half.clone(), second_half.clone()];
        let backward = [second_half, first_half];
        let forward_selection = select(&forward, SelectionMetric::Accuracy, 1, 1).unwrap();
        let backward_selection = select(&backward, SelectionMetric::Accuracy, 1, 1).unwrap();
        assert_eq!(forward_selection.counts, vec![1, 0]);
        assert_eq!(backward_selection.counts, vec![1, 0]);
    }

    #[test]
    fn select_init_ties_keep_position_order() {
        // Even positions are right on 3 of 4 rows and odd positions on 2, so the six
        // starters are the first six even positions.
        let good = binary(&LABELS, &[0.75, 0.75, 0.75, 0.25]);
        let worse = binary(&LABELS, &[0.75, 0.75, 0.25, 0.25]);
        let candidates: Vec<Predictions> = (0..24)
            .map(|position| {
                if position % 2 == 0 {
                    good.clone()
                } else {
                    worse.clone()
                }
            })
            .collect();
        let selection = select(&candidates, SelectionMetric::Accuracy, 6, 6).unwrap();
        let starters: Vec<usize> = (0..24).filter(|&i| selection.counts[i] == 1).collect();
        assert_eq!(starters, vec![0, 2, 4, 6, 8, 10]);
    }

    #[test]
    fn select_complementary_errors_beat_best_member() {
        // Each member is wrong on a different row with 0.25 and right elsewhere with 0.875.
        // A starts on the position tie. A+B is right on all rows (0.5625 on rows 0 and 1) and
        // ties with A+C, so B. C is the only third pick that keeps every row right: A+B+C gives
        // each label 2/3, while a second A or B drops its wrong row to 0.4583.
        let labels = [0, 1, 1];
        let candidates = [
            binary(&labels, &[0.25, 0.875, 0.875]),
            binary(&labels, &[0.875, 0.25, 0.875]),
            binary(&labels, &[0.875, 0.875, 0.25]),
        ];
        let best_single = candidates.iter().map(accuracy).fold(f64::MIN, f64::max);
        let selection = select(&candidates, SelectionMetric::Accuracy, 3, 1).unwrap();
        assert_eq!(best_single, 2.0 / 3.0);
        assert_eq!(selection.counts, vec![1, 1, 1]);
        assert!(
            selection.val_score > best_single,
            "ensemble accuracy {} is not above the best member's {best_single}",
            selection.val_score
        );
    }

    #[test]
    fn select_val_score_is_metric_of_blend() {
        let candidates = three_candidates();
        let refs: Vec<&Predictions> = candidates.iter().collect();
        let selection = select_ensemble(&refs, SelectionMetric::Loss, 4, 3).unwrap();
        assert_eq!(
            selection.val_score,
            log_loss(&blend(&refs, &selection.counts))
        );
    }

    #[test]
    fn select_rejects_no_candidates() {
        let result = select_ensemble(&[], SelectionMetric::Accuracy, 3, 1);
        assert_eq!(result, Err(EnsembleError::NoCandidates));
    }

    #[test]
    fn select_rejects_mismatched_labels() {
        let [a, _, c] = three_candidates();
        let relabelled = binary(&[0, 1, 1, 1], &[0.75; 4]);
        let result = select(&[a, c, relabelled], SelectionMetric::Accuracy, 3, 1);
        let expected = mismatch(2, "label at row 2 is 1, expected 0 as in candidate 0");
        assert_eq!(result, Err(expected));
    }

    #[test]
    fn select_rejects_mismatched_num_classes() {
        let [a, _, _] = three_candidates();
        let four_classes = Predictions {
            num_classes: 4,
            probabilities: vec![0.5; 8],
            labels: LABELS[..2].to_vec(),
        };
        let result = select(&[a, four_classes], SelectionMetric::Accuracy, 3, 1);
        let expected = mismatch(1, "num_classes is 4, expected 2 as in candidate 0");
        assert_eq!(result, Err(expected));
    }

    #[test]
    fn select_rejects_mismatched_rows() {
        let [a, _, _] = three_candidates();
        let short = binary(&LABELS[..3], &[0.75; 3]);
        let result = select(&[a, short], SelectionMetric::Accuracy, 3, 1);
        let expected = mismatch(1, "3 rows, expected 4 as in candidate 0");
        assert_eq!(result, Err(expected));
    }

    #[test]
    fn select_rejects_wrong_probability_count() {
        let [a, mut b, _] = three_candidates();
        b.probabilities.pop();
        let result = select(&[a, b], SelectionMetric::Accuracy, 3, 1);
        let expected = mismatch(1, "7 probabilities, expected 4 rows x 2 classes = 8");
        assert_eq!(result, Err(expected));
    }

    #[test]
    fn select_rejects_non_finite_probability() {
        let [a, mut b, _] = three_candidates();
        b.probabilities[3] = f32::NAN;
        let result = select(&[a, b], SelectionMetric::Loss, 3, 1);
        let expected = mismatch(
            1,
            "probability at row 1, class 1 is NaN, expected a finite value",
        );
        assert_eq!(result, Err(expected));
    }

    #[test]
    fn select_rejects_zero_classes() {
        let empty = Predictions {
            num_classes: 0,
            probabilities: Vec::new(),
            labels: vec![0],
        };
        let result = select(&[empty], SelectionMetric::Accuracy, 1, 1);
        let expected = mismatch(0, "num_classes is 0, expected at least 1");
        assert_eq!(result, Err(expected));
    }

    #[test]
    fn select_rejects_zero_rows() {
        let empty = binary(&[], &[]);
        let result = select(&[empty], SelectionMetric::Accuracy, 1, 1);
        let expected = mismatch(0, "no rows, expected at least 1");
        assert_eq!(result, Err(expected));
    }

    #[test]
    fn select_rejects_label_outside_classes() {
        let mut a = binary(&LABELS, &[0.75; 4]);
        a.labels[1] = 2;
        let result = select(&[a], SelectionMetric::Loss, 1, 1);
        let expected = mismatch(0, "label 2 at row 1 is outside 0..2");
        assert_eq!(result, Err(expected));
    }

    #[test]
    fn select_rejects_invalid_sizes() {
        let candidates = three_candidates();
        for (size, init_size) in [(0, 0), (0, 1), (3, 0), (2, 3)] {
            let result = select(&candidates, SelectionMetric::Accuracy, size, init_size);
            let expected = EnsembleError::InvalidSize { size, init_size };
            assert_eq!(result, Err(expected), "size {size}, init_size {init_size}");
        }
    }

    #[test]
    fn select_accepts_init_size_equal_to_size() {
        let selection = select(&three_candidates(), SelectionMetric::Accuracy, 2, 2).unwrap();
        // C starts, then A and B tie at 1/2 and A has the lower position.
        assert_eq!(selection.counts, vec![1, 0, 1]);
    }

    #[test]
    fn blend_weights_by_count() {
        let p = Predictions {
            num_classes: 2,
            probabilities: vec![0.5, 0.5, 1.0, 0.0],
            labels: vec![0, 1],
        };
        let q = Predictions {
            num_classes: 2,
            probabilities: vec![0.25, 0.75, 0.0, 1.0],
            labels: vec![0, 1],
        };
        let blended = blend(&[&p, &q], &[3, 1]);
        // Row 0: (3 x 0.5 + 0.25) / 4 and (3 x 0.5 + 0.75) / 4; row 1: 3/4 and 1/4.
        assert_eq!(blended.probabilities, vec![0.4375, 0.5625, 0.75, 0.25]);
        assert_eq!(blended.labels, vec![0, 1]);
        assert_eq!(blended.num_classes, 2);
    }

    #[test]
    fn blend_leaves_out_zero_counts() {
        let p = binary(&[0, 1], &[0.75, 0.5]);
        let unused = Predictions {
            num_classes: 2,
            probabilities: vec![f32::NAN; 4],
            labels: vec![0, 1],
        };
        let blended = blend(&[&unused, &p], &[0, 2]);
        assert_eq!(blended, p);
    }

    #[test]
    fn accuracy_counts_correct_rows() {
        let predictions = binary(&[0, 1, 1], &[0.75, 0.125, 0.625]);
        assert_eq!(accuracy(&predictions), 2.0 / 3.0);
    }

    #[test]
    fn accuracy_row_tie_takes_lower_class() {
        let predictions = Predictions {
            num_classes: 3,
            probabilities: vec![0.2, 0.4, 0.4, 0.4, 0.4, 0.2],
            labels: vec![1, 0],
        };
        // Row 0 predicts class 1 over class 2 and row 1 class 0 over class 1.
        assert_eq!(accuracy(&predictions), 1.0);
    }

    #[test]
    fn metrics_of_malformed_are_nan() {
        let mut short = binary(&[0, 1], &[0.75, 0.75]);
        short.probabilities.pop();
        let mut label_outside = binary(&[0, 1], &[0.75, 0.75]);
        label_outside.labels[1] = -1;
        let no_rows = binary(&[], &[]);
        let no_classes = Predictions {
            num_classes: 0,
            probabilities: Vec::new(),
            labels: vec![0],
        };
        for (name, predictions) in [
            ("short", short),
            ("label_outside", label_outside),
            ("no_rows", no_rows),
            ("no_classes", no_classes),
        ] {
            assert!(accuracy(&predictions).is_nan(), "accuracy of {name}");
            assert!(log_loss(&predictions).is_nan(), "log_loss of {name}");
        }
    }

    #[test]
    fn log_loss_averages_rows() {
        let predictions = binary(&[0, 1], &[0.5, 0.25]);
        let expected = (-(0.5_f64.ln()) - 0.25_f64.ln()) / 2.0;
        assert_eq!(log_loss(&predictions), expected);
    }

    #[test]
    fn log_loss_clamps_zero_probability() {
        let predictions = binary(&[0, 1], &[1.0, 0.0]);
        let expected = (-(1.0_f64.ln()) - 1e-7_f64.ln()) / 2.0;
        assert_eq!(log_loss(&predictions), expected);
    }
}
