//! Classification metrics from predicted and true class ids: accuracy, macro-averaged precision,
//! recall and F1, and the confusion matrix.

/// The metrics of one split.
#[derive(Debug, Clone, PartialEq)]
pub struct ClassMetrics {
    pub accuracy: f64,
    /// The unweighted mean over classes of precision, as scikit-learn's `average="macro"`.
    pub macro_precision: f64,
    pub macro_recall: f64,
    pub macro_f1: f64,
    /// `confusion[true][predicted]` counts rows, `num_classes x num_classes`.
    pub confusion: Vec<Vec<u64>>,
}

/// Computes the metrics of `predicted` against `labels`.
///
/// The macro averages run over the classes that occur in `labels` or in `predicted`, as
/// scikit-learn's do. A class's precision, recall or F1 whose denominator is zero counts as 0.
/// Every id must be below `num_classes`.
pub fn class_metrics(predicted: &[i64], labels: &[i64], num_classes: usize) -> ClassMetrics {
    let mut confusion = vec![vec![0u64; num_classes]; num_classes];
    for (&p, &t) in predicted.iter().zip(labels) {
        confusion[t as usize][p as usize] += 1;
    }
    let num_rows = labels.len() as f64;
    let num_correct: u64 = (0..num_classes).map(|c| confusion[c][c]).sum();

    let mut sums = [0.0; 3];
    let mut num_present = 0;
    for class in 0..num_classes {
        let true_positives = confusion[class][class] as f64;
        let num_actual: u64 = confusion[class].iter().sum();
        let num_predicted: u64 = confusion.iter().map(|row| row[class]).sum();
        if num_actual == 0 && num_predicted == 0 {
            continue;
        }
        num_present += 1;
        let precision = ratio(true_positives, num_predicted as f64);
        let recall = ratio(true_positives, num_actual as f64);
        let f1 = ratio(2.0 * precision * recall, precision + recall);
        sums[0] += precision;
        sums[1] += recall;
        sums[2] += f1;
    }
    let mean = |sum: f64| ratio(sum, f64::from(num_present));
    ClassMetrics {
        accuracy: ratio(num_correct as f64, num_rows),
        macro_precision: mean(sums[0]),
        macro_recall: mean(sums[1]),
        macro_f1: mean(sums[2]),
        confusion,
    }
}

fn ratio(numerator: f64, denominator: f64) -> f64 {
    if denominator == 0.0 {
        0.0
    } else {
        numerator / denominator
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_match_hand_computation() {
        // Class 0: 2 of 3 found, 1 false alarm; class 1: 1 of 1, 1 false alarm; class 2: 1 of
        // 2, no false alarm.
        let labels = [0, 0, 0, 1, 2, 2];
        let predicted = [0, 0, 1, 1, 2, 0];
        let metrics = class_metrics(&predicted, &labels, 3);
        assert_eq!(
            metrics.confusion,
            vec![vec![2, 1, 0], vec![0, 1, 0], vec![1, 0, 1]]
        );
        assert!((metrics.accuracy - 4.0 / 6.0).abs() < 1e-12);
        let precision = (2.0 / 3.0 + 0.5 + 1.0) / 3.0;
        let recall = (2.0 / 3.0 + 1.0 + 0.5) / 3.0;
        let f1 = (2.0 / 3.0 + 2.0 / 3.0 + 2.0 / 3.0) / 3.0;
        assert!((metrics.macro_precision - precision).abs() < 1e-12);
        assert!((metrics.macro_recall - recall).abs() < 1e-12);
        assert!((metrics.macro_f1 - f1).abs() < 1e-12);
    }

    #[test]
    fn metrics_skip_absent_classes() {
        let metrics = class_metrics(&[0, 1], &[0, 1], 4);
        assert_eq!(metrics.macro_f1, 1.0);
        assert_eq!(metrics.confusion[3], vec![0, 0, 0, 0]);
    }

    #[test]
    fn metrics_count_never_predicted_class_as_zero() {
        let metrics = class_metrics(&[0, 0], &[0, 1], 2);
        assert_eq!(metrics.macro_precision, 0.25);
        assert_eq!(metrics.macro_recall, 0.5);
    }
}
