//! Sobol search: point `index` of an Owen-scrambled Sobol sequence over the unit cube, one
//! dimension per declared parameter, mapped onto each domain like a random draw.
//!
//! `sobol_burley` (Burley, "Practical Hash-based Owen Scrambling", JCGT 2020) scrambles and
//! shuffles the sequence with a 32-bit seed, so every prefix of 2^k points keeps the
//! stratification of a Sobol net. Its points have 24 bits (`f32`), so the trial's ChaCha8
//! stream fills the bits below, uniformly within each point's cell. Continuous parameters then
//! get distinct values without losing the stratification.

use rand::Rng;
use tunefleet_proto::Value;

use super::space::{build_point, value_at};
use super::{splitmix64, trial_stream};
use crate::spec::ParameterSpec;

/// Width of one cell of the `f32` points of `sobol_burley`.
const CELL: f64 = 1.0 / (1u64 << 24) as f64;

/// Returns point `index` of the sweep's scrambled Sobol sequence. An inactive parameter keeps
/// its dimension, so conditions never move the other parameters' coordinates.
///
/// The caller keeps `index` below 2^16 and the parameters at most 256, the limits of
/// `sobol_burley`: the spec allows at most 65536 Sobol trials and the schema has fewer than 256
/// hyperparameters.
pub(super) fn sobol_point(
    parameters: &[ParameterSpec],
    seed: u64,
    index: u32,
) -> Vec<(String, Value)> {
    let mut rng = trial_stream(seed, index);
    let scramble_seed = splitmix64(seed, 0) as u32;
    let coordinates: Vec<f64> = (0..parameters.len())
        .map(|dimension| {
            let cell = f64::from(sobol_burley::sample(index, dimension as u32, scramble_seed));
            let within: f64 = rng.random();
            (cell + within * CELL).min(1.0 - f64::EPSILON / 2.0)
        })
        .collect();
    build_point(parameters, |position, parameter, _| {
        value_at(&parameter.domain, coordinates[position])
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::Domain;

    fn unit_parameters(count: usize) -> Vec<ParameterSpec> {
        (0..count)
            .map(|p| ParameterSpec {
                name: format!("x{p}"),
                domain: Domain::Uniform {
                    min: 0.0,
                    max: 1.0,
                    q: None,
                },
                when: Vec::new(),
            })
            .collect()
    }

    fn coordinates(seed: u64, count: u32, dimensions: usize) -> Vec<Vec<f64>> {
        let parameters = unit_parameters(dimensions);
        (0..count)
            .map(|index| {
                sobol_point(&parameters, seed, index)
                    .iter()
                    .map(|(_, value)| value.as_f64().unwrap())
                    .collect()
            })
            .collect()
    }

    #[test]
    fn sobol_prefix_is_balanced_per_dimension() {
        // Each prefix of 2^k points puts exactly one point into each of 2^k equal bins.
        for num_points in [8_u32, 16, 64] {
            let points = coordinates(11, num_points, 5);
            for dimension in 0..5 {
                let mut counts = vec![0; num_points as usize];
                for point in &points {
                    counts[(point[dimension] * f64::from(num_points)) as usize] += 1;
                }
                assert!(
                    counts.iter().all(|&c| c == 1),
                    "{num_points} points, dimension {dimension}: {counts:?}"
                );
            }
        }
    }

    #[test]
    fn sobol_pairs_are_stratified() {
        // The first 16 points of two Sobol dimensions fill each 4 x 4 cell once.
        let points = coordinates(3, 16, 2);
        let mut counts = [[0; 4]; 4];
        for point in &points {
            counts[(point[0] * 4.0) as usize][(point[1] * 4.0) as usize] += 1;
        }
        assert_eq!(counts, [[1; 4]; 4]);
    }

    #[test]
    fn sobol_repeats_for_same_seed() {
        assert_eq!(coordinates(5, 32, 3), coordinates(5, 32, 3));
    }

    #[test]
    fn sobol_differs_across_seeds() {
        assert_ne!(coordinates(5, 32, 3), coordinates(6, 32, 3));
    }
}
