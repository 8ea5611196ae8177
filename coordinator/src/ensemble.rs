//! Ensemble selection from a library of trained trials (Caruana, Niculescu-Mizil, Crew and
//! Ksikes, "Ensemble Selection from Libraries of Models", ICML 2004): greedy forward selection
//! with replacement over validation probabilities, with sorted initialisation.

/// The metric ensemble selection optimises on the validation split.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SelectionMetric {
    /// Fraction of rows whose most probable class is the label; higher is better.
    Accuracy,
    /// Mean negative log-likelihood of the label; lower is better.
    Loss,
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
    #[error("no candidates to select an ensemble from")]
    NoCandidates,
    #[error("candidate {index} does not match the first: {detail}")]
    Mismatch { index: usize, detail: String },
    #[error("invalid ensemble size {size} with init_size {init_size}: expected 1 <= init_size <= size")]
    InvalidSize { size: u32, init_size: u32 },
}

/// Selects an ensemble of `size` picks from `candidates` (validation predictions).
///
/// Ties are broken by the lower candidate position, so callers order candidates by their
/// individual validation score, best first, then by trial index.
pub fn select_ensemble(
    candidates: &[&Predictions],
    metric: SelectionMetric,
    size: u32,
    init_size: u32,
) -> Result<Selection, EnsembleError> {
    let _ = (candidates, metric, size, init_size);
    todo!()
}

/// Averages predictions weighted by `counts` (members with count 0 are left out).
pub fn blend(predictions: &[&Predictions], counts: &[u32]) -> Predictions {
    let _ = (predictions, counts);
    todo!()
}

/// Returns the fraction of rows whose arg-max class equals the label.
pub fn accuracy(predictions: &Predictions) -> f64 {
    let _ = predictions;
    todo!()
}

/// Returns the mean negative log-likelihood of the labels, probabilities clamped to >= 1e-7.
pub fn log_loss(predictions: &Predictions) -> f64 {
    let _ = predictions;
    todo!()
}
