//! Process metrics with the names Prometheus client libraries use, read from `/proc/self`.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

/// Clock ticks per second in `/proc/*/stat`: Linux fixes USER_HZ at 100 for user space on
/// every architecture it exports `/proc` times on.
const TICKS_PER_SECOND: f64 = 100.0;

/// Encodes `process_*` metrics of this process on each scrape; on systems without `/proc` it
/// encodes nothing.
#[derive(Debug)]
pub struct ProcessCollector;

/// One reading of this process's resources.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessSample {
    pub cpu_seconds: f64,
    pub resident_bytes: i64,
    pub virtual_bytes: i64,
    pub num_threads: i64,
    pub open_fds: i64,
    /// Start time in seconds since the Unix epoch.
    pub start_time_seconds: f64,
}

impl ProcessSample {
    /// Reads this process's sample from `/proc`.
    pub fn read() -> Option<Self> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        let boot_time = boot_time_seconds()?;
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let open_fds = std::fs::read_dir("/proc/self/fd").ok()?.count() as i64;
        parse_sample(&stat, &status, boot_time, open_fds)
    }
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(sample) = ProcessSample::read() else {
            return Ok(());
        };
        let cpu = ConstCounter::new(sample.cpu_seconds);
        cpu.encode(encoder.encode_descriptor(
            "process_cpu_seconds",
            "User and system CPU time spent, in seconds",
            None,
            cpu.metric_type(),
        )?)?;
        let gauges = [
            (
                "process_resident_memory_bytes",
                "Resident memory size in bytes",
                sample.resident_bytes as f64,
            ),
            (
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes",
                sample.virtual_bytes as f64,
            ),
            (
                "process_threads",
                "Number of OS threads",
                sample.num_threads as f64,
            ),
            (
                "process_open_fds",
                "Number of open file descriptors",
                sample.open_fds as f64,
            ),
            (
                "process_start_time_seconds",
                "Start time of the process since the Unix epoch, in seconds",
                sample.start_time_seconds,
            ),
        ];
        for (name, help, value) in gauges {
            let gauge = ConstGauge::new(value);
            gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)?;
        }
        Ok(())
    }
}

fn boot_time_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|line| line.starts_with("btime "))?;
    line["btime ".len()..].trim().parse().ok()
}

/// Parses `/proc/self/stat` and `/proc/self/status` (see proc(5)).
fn parse_sample(stat: &str, status: &str, boot_time: f64, open_fds: i64) -> Option<ProcessSample> {
    // The command name in field 2 may contain spaces and parentheses, so fields are counted
    // from the last ')'. After it, field 3 (state) comes first.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |number: usize| -> Option<f64> { fields.get(number - 3)?.parse().ok() };
    let utime = field(14)?;
    let stime = field(15)?;
    let num_threads = field(20)?;
    let start_ticks = field(22)?;
    let status_kib = |key: &str| -> Option<i64> {
        let line = status.lines().find(|line| line.starts_with(key))?;
        let value = line[key.len()..].trim().trim_end_matches("kB").trim();
        value.parse::<i64>().ok().map(|kib| kib * 1024)
    };
    Some(ProcessSample {
        cpu_seconds: (utime + stime) / TICKS_PER_SECOND,
        resident_bytes: status_kib("VmRSS:").unwrap_or(0),
        virtual_bytes: status_kib("VmSize:").unwrap_or(0),
        num_threads: num_threads as i64,
        open_fds,
        start_time_seconds: boot_time + start_ticks / TICKS_PER_SECOND,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT: &str = "4242 (tune fleet) S 1 4242 4242 0 -1 4194560 1200 0 0 0 250 50 0 0 20 0 7 0 3000 123456789 2048 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";
    const STATUS: &str =
        "Name:\ttunefleet\nVmSize:\t  120000 kB\nVmRSS:\t    8192 kB\nThreads:\t7\n";

    #[test]
    fn sample_parses_stat_fields() {
        let sample = parse_sample(STAT, STATUS, 1_000_000.0, 12).unwrap();
        assert_eq!(sample.cpu_seconds, 3.0);
        assert_eq!(sample.num_threads, 7);
        assert_eq!(sample.start_time_seconds, 1_000_030.0);
        assert_eq!(sample.open_fds, 12);
    }

    #[test]
    fn sample_reads_memory_from_status() {
        let sample = parse_sample(STAT, STATUS, 0.0, 0).unwrap();
        assert_eq!(sample.resident_bytes, 8192 * 1024);
        assert_eq!(sample.virtual_bytes, 120_000 * 1024);
    }

    #[test]
    fn sample_rejects_truncated_stat() {
        assert!(parse_sample("4242 (x) S 1 2", STATUS, 0.0, 0).is_none());
    }

    #[test]
    fn sample_reads_this_process() {
        let sample = ProcessSample::read().unwrap();
        assert!(sample.resident_bytes > 0, "{sample:?}");
        assert!(sample.num_threads >= 1, "{sample:?}");
    }
}
