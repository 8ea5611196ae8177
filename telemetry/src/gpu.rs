//! GPU memory and utilisation read through NVML, which is loaded at run time so that hosts
//! without an NVIDIA driver run the same binary.

use std::sync::OnceLock;

use nvml_wrapper::Nvml;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use std::sync::atomic::AtomicU64;

/// NVML, loaded by the first caller; `None` when `libnvidia-ml.so.1` is absent or fails to start.
static NVML: OnceLock<Option<Nvml>> = OnceLock::new();

/// One GPU as NVML reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct GpuInfo {
    /// NVML's device index, which orders devices by PCI bus id and may differ from CUDA's order
    /// unless `CUDA_DEVICE_ORDER=PCI_BUS_ID`.
    pub index: u32,
    pub name: String,
    pub uuid: String,
    pub memory_used_bytes: u64,
    pub memory_total_bytes: u64,
    /// Percent of the last sample period in which a kernel ran.
    pub utilization_percent: u32,
}

/// Loads NVML once per process and logs once when it is missing.
fn nvml() -> Option<&'static Nvml> {
    NVML.get_or_init(|| match Nvml::init() {
        Ok(nvml) => Some(nvml),
        Err(err) => {
            tracing::info!(error = %err, "NVML not available: no GPU metrics");
            None
        }
    })
    .as_ref()
}

/// Lists the GPUs that NVML reports, with their memory in use. Fails when NVML cannot be
/// loaded.
pub fn list_gpus() -> Result<Vec<GpuInfo>, String> {
    let nvml = match NVML.get() {
        Some(loaded) => loaded.as_ref(),
        None => nvml(),
    };
    let Some(nvml) = nvml else {
        return Err(match Nvml::init() {
            Ok(_) => "NVML loaded on retry; run again".to_string(),
            Err(err) => format!("NVML not available: {err}"),
        });
    };
    let count = nvml
        .device_count()
        .map_err(|err| format!("NVML failed to count devices: {err}"))?;
    (0..count)
        .map(|index| {
            let device = nvml
                .device_by_index(index)
                .map_err(|err| format!("NVML failed to open GPU {index}: {err}"))?;
            let memory = device
                .memory_info()
                .map_err(|err| format!("NVML failed to read GPU {index} memory: {err}"))?;
            Ok(GpuInfo {
                index,
                name: device.name().unwrap_or_default(),
                uuid: device.uuid().unwrap_or_default(),
                memory_used_bytes: memory.used,
                memory_total_bytes: memory.total,
                utilization_percent: device.utilization_rates().map_or(0, |rates| rates.gpu),
            })
        })
        .collect()
}

/// Labels of the per-GPU metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GpuLabels {
    gpu: String,
    name: String,
    uuid: String,
}

/// Encodes `tunefleet_gpu_*` for every GPU on each scrape; without NVML it encodes nothing.
#[derive(Debug)]
pub struct GpuCollector;

impl GpuCollector {
    /// Creates the collector and loads NVML, logging once per process when it is missing.
    pub fn new() -> Self {
        let _ = nvml();
        Self
    }
}

impl Default for GpuCollector {
    fn default() -> Self {
        Self::new()
    }
}

impl Collector for GpuCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        if nvml().is_none() {
            return Ok(());
        }
        let gpus = match list_gpus() {
            Ok(gpus) => gpus,
            Err(err) => {
                tracing::warn!(error = %err, "failed to read GPU metrics");
                return Ok(());
            }
        };
        let used = Family::<GpuLabels, Gauge<f64, AtomicU64>>::default();
        let total = Family::<GpuLabels, Gauge<f64, AtomicU64>>::default();
        let utilization = Family::<GpuLabels, Gauge<f64, AtomicU64>>::default();
        for gpu in gpus {
            let labels = GpuLabels {
                gpu: gpu.index.to_string(),
                name: gpu.name,
                uuid: gpu.uuid,
            };
            used.get_or_create(&labels)
                .set(gpu.memory_used_bytes as f64);
            total
                .get_or_create(&labels)
                .set(gpu.memory_total_bytes as f64);
            utilization
                .get_or_create(&labels)
                .set(f64::from(gpu.utilization_percent) / 100.0);
        }
        let metrics = [
            (
                "tunefleet_gpu_memory_used_bytes",
                "GPU memory in use, in bytes, by every process on the GPU",
                &used,
            ),
            (
                "tunefleet_gpu_memory_total_bytes",
                "GPU memory installed, in bytes",
                &total,
            ),
            (
                "tunefleet_gpu_utilization_ratio",
                "Fraction of the last NVML sample period in which a kernel ran on the GPU",
                &utilization,
            ),
        ];
        for (name, help, family) in metrics {
            family.encode(encoder.encode_descriptor(name, help, None, family.metric_type())?)?;
        }
        Ok(())
    }
}
