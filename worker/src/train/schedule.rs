//! The learning rate of each epoch: a linear warmup, then a constant, step or cosine schedule.

use tunefleet_proto::hyper::TrainConfig;

/// A learning-rate schedule over the epochs of one run. The rate changes between epochs.
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    base_lr: f64,
    kind: ScheduleKind,
    warmup_epochs: u32,
    num_epochs: u32,
}

#[derive(Debug, Clone, PartialEq)]
enum ScheduleKind {
    Constant,
    Step { step_size: u32, gamma: f64 },
    Cosine,
}

impl Schedule {
    /// Builds the schedule of `config` for a run of `num_epochs` epochs.
    pub fn new(config: &TrainConfig, num_epochs: u32) -> Self {
        let kind = match config.lr_schedule.as_str() {
            "step" => ScheduleKind::Step {
                step_size: config.step_size.clamp(1, i64::from(u32::MAX)) as u32,
                gamma: config.gamma,
            },
            "cosine" => ScheduleKind::Cosine,
            _ => ScheduleKind::Constant,
        };
        Schedule {
            base_lr: config.lr,
            kind,
            warmup_epochs: config.warmup_epochs.clamp(0, i64::from(u32::MAX)) as u32,
            num_epochs,
        }
    }

    /// Returns the learning rate of `epoch` (from 1).
    ///
    /// Warmup epoch `e` of `w` uses `lr * e / (w + 1)`, so the rate climbs towards `lr` without
    /// reaching it early. Epoch `e` after the warmup is epoch `t = e - w - 1` of the schedule:
    /// step multiplies `lr` by `gamma` every `step_size` epochs, and cosine decays from `lr`
    /// towards 0 as `lr * (1 + cos(pi * t / T)) / 2` over the `T` epochs after the warmup.
    pub fn lr(&self, epoch: u32) -> f64 {
        if epoch <= self.warmup_epochs {
            return self.base_lr * f64::from(epoch) / f64::from(self.warmup_epochs + 1);
        }
        let t = epoch - self.warmup_epochs - 1;
        match self.kind {
            ScheduleKind::Constant => self.base_lr,
            ScheduleKind::Step { step_size, gamma } => {
                self.base_lr * gamma.powi((t / step_size) as i32)
            }
            ScheduleKind::Cosine => {
                let num_decay = self.num_epochs.saturating_sub(self.warmup_epochs).max(1);
                let progress = f64::from(t) / f64::from(num_decay);
                self.base_lr * (1.0 + (std::f64::consts::PI * progress).cos()) / 2.0
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use tunefleet_proto::Value;

    use super::*;

    fn schedule(params: &[(&str, Value)], num_epochs: u32) -> Schedule {
        let params: Vec<(String, Value)> = params
            .iter()
            .map(|(name, value)| (name.to_string(), value.clone()))
            .collect();
        Schedule::new(
            &TrainConfig::from_params("cnn", &params).unwrap(),
            num_epochs,
        )
    }

    fn assert_close(actual: f64, expected: f64) {
        assert!((actual - expected).abs() < 1e-12, "{actual} != {expected}");
    }

    #[test]
    fn constant_keeps_lr() {
        let schedule = schedule(&[("lr", Value::Float(0.1))], 5);
        assert_close(schedule.lr(1), 0.1);
        assert_close(schedule.lr(5), 0.1);
    }

    #[test]
    fn step_decays_every_step_size() {
        let params = [
            ("lr", Value::Float(0.1)),
            ("lr_schedule", Value::String("step".into())),
            ("step_size", Value::Int(2)),
            ("gamma", Value::Float(0.5)),
        ];
        let schedule = schedule(&params, 6);
        let rates: Vec<f64> = (1..=6).map(|e| schedule.lr(e)).collect();
        assert_eq!(rates, vec![0.1, 0.1, 0.05, 0.05, 0.025, 0.025]);
    }

    #[test]
    fn cosine_decays_to_half_midway() {
        let params = [
            ("lr", Value::Float(0.2)),
            ("lr_schedule", Value::String("cosine".into())),
        ];
        let schedule = schedule(&params, 4);
        assert_close(schedule.lr(1), 0.2);
        assert_close(schedule.lr(3), 0.1);
        assert_close(
            schedule.lr(4),
            0.1 * (1.0 + (0.75 * std::f64::consts::PI).cos()),
        );
    }

    #[test]
    fn warmup_climbs_then_schedule_starts() {
        let params = [
            ("lr", Value::Float(0.3)),
            ("lr_schedule", Value::String("cosine".into())),
            ("warmup_epochs", Value::Int(2)),
        ];
        let schedule = schedule(&params, 6);
        assert_close(schedule.lr(1), 0.1);
        assert_close(schedule.lr(2), 0.2);
        assert_close(schedule.lr(3), 0.3);
        assert_close(schedule.lr(5), 0.15);
    }
}
