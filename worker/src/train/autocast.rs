//! bf16 autocast through a C++ shim over libtorch's autocast state, because tch's `autocast`
//! cannot choose a dtype and libtorch's default CUDA autocast dtype is float16.
//!
//! Autocast runs eligible operations such as matmuls and convolutions in bfloat16 while the
//! weights stay float32. Its state is thread-local, so a guard covers only the thread that
//! created it.

use std::marker::PhantomData;
use std::os::raw::c_int;

use tch::Device;

/// Device codes of the shim, which maps them to libtorch's CPU and CUDA device types.
const CPU: c_int = 0;
const CUDA: c_int = 1;

extern "C" {
    fn tunefleet_autocast_is_enabled(device: c_int) -> bool;
    fn tunefleet_autocast_set_enabled(device: c_int, enabled: bool);
    fn tunefleet_autocast_is_bf16(device: c_int) -> bool;
    fn tunefleet_autocast_set_bf16(device: c_int) -> c_int;
    fn tunefleet_autocast_restore_dtype(device: c_int, dtype: c_int);
    fn tunefleet_autocast_increment_nesting() -> c_int;
    fn tunefleet_autocast_decrement_nesting();
}

/// Enables bf16 autocast for one device type on the current thread until it is dropped, and
/// then restores the previous state. Guards nest like `torch.autocast` regions.
#[must_use = "autocast ends when the guard is dropped"]
pub struct Bf16Autocast {
    device: c_int,
    was_enabled: bool,
    previous_dtype: c_int,
    /// The state is thread-local, so the guard must be dropped on the thread that made it.
    _not_send: PhantomData<*const ()>,
}

impl Bf16Autocast {
    /// Enables bf16 autocast on this thread for the CPU when `device` is the CPU, and for CUDA
    /// otherwise. The trainer accepts bf16 only on the CPU and CUDA devices.
    pub fn new(device: Device) -> Bf16Autocast {
        let device = device_code(device);
        // SAFETY: the shim's functions take plain integers and touch only libtorch's
        // thread-local autocast state, which the guard restores on the same thread.
        unsafe {
            let was_enabled = tunefleet_autocast_is_enabled(device);
            let previous_dtype = tunefleet_autocast_set_bf16(device);
            tunefleet_autocast_set_enabled(device, true);
            tunefleet_autocast_increment_nesting();
            Bf16Autocast {
                device,
                was_enabled,
                previous_dtype,
                _not_send: PhantomData,
            }
        }
    }
}

impl Drop for Bf16Autocast {
    fn drop(&mut self) {
        // SAFETY: as in `new`; `previous_dtype` came from libtorch itself.
        unsafe {
            tunefleet_autocast_decrement_nesting();
            tunefleet_autocast_set_enabled(self.device, self.was_enabled);
            tunefleet_autocast_restore_dtype(self.device, self.previous_dtype);
        }
    }
}

/// Tells whether bf16 autocast is on for `device`'s device type on this thread.
pub fn bf16_enabled(device: Device) -> bool {
    let device = device_code(device);
    // SAFETY: reads libtorch's thread-local autocast state.
    unsafe { tunefleet_autocast_is_enabled(device) && tunefleet_autocast_is_bf16(device) }
}

fn device_code(device: Device) -> c_int {
    match device {
        Device::Cpu => CPU,
        _ => CUDA,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Kind, Tensor};

    fn matmul_kind() -> Kind {
        let a = Tensor::ones([2, 3], (Kind::Float, Device::Cpu));
        let b = Tensor::ones([3, 2], (Kind::Float, Device::Cpu));
        a.matmul(&b).kind()
    }

    #[test]
    fn guard_runs_matmul_in_bf16() {
        let guard = Bf16Autocast::new(Device::Cpu);
        assert!(bf16_enabled(Device::Cpu));
        assert_eq!(matmul_kind(), Kind::BFloat16);
        drop(guard);
    }

    #[test]
    fn cross_entropy_stays_fp32() {
        let _guard = Bf16Autocast::new(Device::Cpu);
        let logits = Tensor::ones([4, 3], (Kind::Float, Device::Cpu))
            .matmul(&Tensor::eye(3, (Kind::Float, Device::Cpu)));
        let labels = Tensor::from_slice(&[0i64, 1, 2, 0]);
        let loss =
            logits.cross_entropy_loss::<Tensor>(&labels, None, tch::Reduction::Mean, -100, 0.0);
        assert_eq!(logits.kind(), Kind::BFloat16);
        assert_eq!(loss.kind(), Kind::Float);
    }

    #[test]
    fn drop_restores_fp32() {
        drop(Bf16Autocast::new(Device::Cpu));
        assert!(!bf16_enabled(Device::Cpu));
        assert_eq!(matmul_kind(), Kind::Float);
    }

    #[test]
    fn nested_guards_restore_the_outer_state() {
        let outer = Bf16Autocast::new(Device::Cpu);
        drop(Bf16Autocast::new(Device::Cpu));
        assert!(bf16_enabled(Device::Cpu));
        assert_eq!(matmul_kind(), Kind::BFloat16);
        drop(outer);
        assert_eq!(matmul_kind(), Kind::Float);
    }

    #[test]
    fn guard_leaves_cuda_state_alone() {
        let _guard = Bf16Autocast::new(Device::Cpu);
        assert!(!bf16_enabled(Device::Cuda(0)));
    }
}
