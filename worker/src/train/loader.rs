//! Prepares an epoch's training batches on a thread of their own: gathers the shuffled rows,
//! applies the seeded augmentation and hands finished batches over a bounded channel, so the
//! training thread does not wait on batch preparation while it computes.

use std::sync::mpsc::{self, Receiver};

use tch::{TchError, Tensor};

use super::shuffle::{self, SplitMix64};

/// Finished batches waiting for the training thread. Two keep the trainer busy while a third is
/// prepared, and bound the memory of batches that are ready but not yet used.
const READY_BATCHES: usize = 2;
/// Separates the augmentation draws from the shuffling draws of the same seed and epoch.
const AUGMENT_STREAM: u64 = 0xa5a5;

/// Random transformations of training images, drawn anew for every image of every epoch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Augmentation {
    /// Pixels of zero padding on each side before a random crop to the original size; 0 turns
    /// cropping off.
    pub crop_padding: i64,
    /// Mirrors half of the images left to right.
    pub horizontal_flip: bool,
}

/// One epoch's batch plan.
pub struct EpochBatches {
    pub x: Tensor,
    pub y: Tensor,
    pub batch_size: i64,
    pub seed: u64,
    pub epoch: u32,
    pub augmentation: Option<Augmentation>,
}

/// Starts preparing the batches of one epoch and returns the receiving end. The thread ends
/// after the last batch or when the receiver is dropped.
pub fn spawn(plan: EpochBatches) -> Receiver<Result<(Tensor, Tensor), TchError>> {
    let (batch_tx, batch_rx) = mpsc::sync_channel(READY_BATCHES);
    std::thread::spawn(move || {
        let _no_grad = tch::no_grad_guard();
        let num_rows = plan.y.size()[0];
        let order = shuffle::permutation(num_rows as usize, plan.seed, plan.epoch);
        let mut rng = SplitMix64::new(plan.seed, plan.epoch, AUGMENT_STREAM);
        for rows in order.chunks(plan.batch_size as usize) {
            let batch = prepare(&plan, rows, &mut rng);
            let failed = batch.is_err();
            if batch_tx.send(batch).is_err() || failed {
                return;
            }
        }
    });
    batch_rx
}

fn prepare(
    plan: &EpochBatches,
    rows: &[i64],
    rng: &mut SplitMix64,
) -> Result<(Tensor, Tensor), TchError> {
    let rows = Tensor::from_slice(rows).f_to_device(plan.x.device())?;
    let x = plan.x.f_index_select(0, &rows)?;
    let y = plan.y.f_index_select(0, &rows)?;
    let x = match plan.augmentation {
        Some(augmentation) if x.dim() == 4 => augment(&x, augmentation, rng)?,
        _ => x,
    };
    Ok((x, y))
}

/// Applies `augmentation` to a batch of `NCHW` images, each image with its own draws.
pub fn augment(
    x: &Tensor,
    augmentation: Augmentation,
    rng: &mut SplitMix64,
) -> Result<Tensor, TchError> {
    let size = x.size();
    let (height, width) = (size[2], size[3]);
    let padding = augmentation.crop_padding;
    let padded = if padding > 0 {
        x.f_constant_pad_nd([padding, padding, padding, padding])?
    } else {
        x.shallow_clone()
    };
    let mut images = Vec::with_capacity(size[0] as usize);
    for i in 0..size[0] {
        let mut image = padded.f_get(i)?;
        if padding > 0 {
            let top = rng.below(2 * padding as u64 + 1) as i64;
            let left = rng.below(2 * padding as u64 + 1) as i64;
            image = image.f_narrow(1, top, height)?.f_narrow(2, left, width)?;
        }
        if augmentation.horizontal_flip && rng.below(2) == 1 {
            image = image.f_flip([2])?;
        }
        images.push(image);
    }
    Tensor::f_stack(&images, 0)
}

#[cfg(test)]
mod tests {
    use tch::{Device, Kind};

    use super::*;

    fn ramp() -> Tensor {
        Tensor::arange(2 * 3 * 4 * 4, (Kind::Float, Device::Cpu)).view([2, 3, 4, 4])
    }

    #[test]
    fn augment_keeps_shape() {
        let augmentation = Augmentation {
            crop_padding: 2,
            horizontal_flip: true,
        };
        let out = augment(&ramp(), augmentation, &mut SplitMix64::new(1, 1, 0)).unwrap();
        assert_eq!(out.size(), vec![2, 3, 4, 4]);
    }

    #[test]
    fn augment_repeats_for_same_seed() {
        let augmentation = Augmentation {
            crop_padding: 2,
            horizontal_flip: true,
        };
        let a = augment(&ramp(), augmentation, &mut SplitMix64::new(1, 1, 0)).unwrap();
        let b = augment(&ramp(), augmentation, &mut SplitMix64::new(1, 1, 0)).unwrap();
        assert!(a.equal(&b));
    }

    #[test]
    fn flip_only_mirrors_or_keeps_each_image() {
        let augmentation = Augmentation {
            crop_padding: 0,
            horizontal_flip: true,
        };
        let x = ramp();
        let mut rng = SplitMix64::new(3, 1, 0);
        let out = augment(&x, augmentation, &mut rng).unwrap();
        for i in 0..2 {
            let image = out.get(i);
            let kept = image.equal(&x.get(i));
            let mirrored = image.equal(&x.get(i).flip([2]));
            assert!(kept || mirrored, "image {i} is neither kept nor mirrored");
        }
    }

    #[test]
    fn crop_takes_window_of_padded_image() {
        let augmentation = Augmentation {
            crop_padding: 1,
            horizontal_flip: false,
        };
        let x = Tensor::ones([1, 1, 2, 2], (Kind::Float, Device::Cpu));
        let out = augment(&x, augmentation, &mut SplitMix64::new(5, 1, 0)).unwrap();
        let sum = out.sum(Kind::Float).double_value(&[]);
        // A 2x2 window of a 4x4 image with a ring of zeros contains 1 to 4 of the original ones.
        assert!((1.0..=4.0).contains(&sum), "{sum}");
    }

    #[test]
    fn spawn_yields_every_row_once() {
        let x = Tensor::arange(10, (Kind::Float, Device::Cpu)).view([10, 1]);
        let y = Tensor::arange(10, (Kind::Int64, Device::Cpu));
        let batches = spawn(EpochBatches {
            x,
            y,
            batch_size: 4,
            seed: 1,
            epoch: 1,
            augmentation: None,
        });
        let mut rows: Vec<i64> = Vec::new();
        let mut sizes = Vec::new();
        for batch in batches {
            let (_, y) = batch.unwrap();
            sizes.push(y.size()[0]);
            rows.extend(Vec::<i64>::try_from(&y).unwrap());
        }
        rows.sort_unstable();
        assert_eq!(rows, (0..10).collect::<Vec<i64>>());
        assert_eq!(sizes, vec![4, 4, 2]);
    }
}
