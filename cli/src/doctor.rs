//! `tunefleet doctor`: checks what a host needs to run a coordinator or a worker, and prints
//! one line per check with what to do about a problem.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use x509_parser::certificate::X509Certificate;
use x509_parser::pem::Pem;

/// Certificates that expire within this many days get a warning.
const EXPIRY_WARNING_DAYS: i64 = 14;
/// How long the health check of one coordinator may take.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, clap::Args)]
pub struct DoctorArgs {
    /// The coordinator's URL to health-check, or several separated by commas
    /// [default: no coordinator check].
    #[arg(long, env = "TUNEFLEET_COORDINATOR")]
    coordinator: Option<String>,

    /// PEM file of the CA that signed the coordinator's certificate (or the worker's, for
    /// mutual TLS).
    #[arg(long, value_name = "PEM")]
    tls_ca: Option<PathBuf>,

    /// PEM file of this host's certificate.
    #[arg(long, value_name = "PEM")]
    tls_cert: Option<PathBuf>,

    /// PEM file of the private key of --tls-cert.
    #[arg(long, value_name = "PEM")]
    tls_key: Option<PathBuf>,

    /// Bearer token sent with the health check.
    #[arg(long, env = "TUNEFLEET_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

/// The outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Ok,
    Warn,
    Fail,
    Skip,
}

/// The result of one check: what was found and, for a problem, the fix.
#[derive(Debug, Clone)]
struct Finding {
    verdict: Verdict,
    check: &'static str,
    detail: String,
    fix: Option<String>,
}

impl Finding {
    fn ok(check: &'static str, detail: impl Into<String>) -> Self {
        Self {
            verdict: Verdict::Ok,
            check,
            detail: detail.into(),
            fix: None,
        }
    }

    fn problem(
        verdict: Verdict,
        check: &'static str,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        Self {
            verdict,
            check,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }

    fn line(&self) -> String {
        let verdict = match self.verdict {
            Verdict::Ok => "ok",
            Verdict::Warn => "warn",
            Verdict::Fail => "fail",
            Verdict::Skip => "skip",
        };
        let mut line = format!("{verdict:<5} {}: {}", self.check, self.detail);
        if let Some(fix) = &self.fix {
            line.push_str(&format!(" (fix: {fix})"));
        }
        line
    }
}

/// Runs every check, prints one line each and exits 1 when any check failed.
pub async fn run(args: DoctorArgs) -> anyhow::Result<ExitCode> {
    let mut findings = vec![check_libtorch(), check_cuda(), check_nvml()];
    let tls = tunefleet_proto::ClientSecurity::tls_from_files(
        args.tls_ca.as_deref(),
        args.tls_cert.as_deref(),
        args.tls_key.as_deref(),
    );
    findings
        .extend(check_coordinator(args.coordinator.as_deref(), tls, args.token.as_deref()).await);
    findings.extend(check_certificates(
        args.tls_ca.as_deref(),
        args.tls_cert.as_deref(),
        args.tls_key.as_deref(),
    ));
    for finding in &findings {
        println!("{}", finding.line());
    }
    let num_failed = findings
        .iter()
        .filter(|f| f.verdict == Verdict::Fail)
        .count();
    if num_failed > 0 {
        println!("{num_failed} check(s) failed");
        return Ok(ExitCode::from(crate::EXIT_FAILED));
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs a small tensor operation through tch, as the trainer does, and reads the version of
/// the libtorch this process loaded.
fn check_libtorch() -> Finding {
    let sum = tch::Tensor::from_slice(&[1.0f32, 2.0, 3.0]).sum(tch::Kind::Float);
    let value = sum.double_value(&[]);
    if value != 6.0 {
        return Finding::problem(
            Verdict::Fail,
            "libtorch",
            format!("a test sum of 1+2+3 returned {value}"),
            "reinstall libtorch; the loaded build computes wrong results",
        );
    }
    match loaded_libtorch() {
        Some((library, Some(version))) => Finding::ok(
            "libtorch",
            format!("{version} loaded from {}", library.display()),
        ),
        Some((library, None)) => Finding::ok(
            "libtorch",
            format!(
                "loaded from {} (no version file beside it)",
                library.display()
            ),
        ),
        None => Finding::ok(
            "libtorch",
            "loaded (library path not found in /proc/self/maps)",
        ),
    }
}

/// Finds the `libtorch_cpu.so` mapped into this process and the version recorded beside it:
/// `version.py` of a PyTorch wheel or `build-version` of a libtorch archive.
fn loaded_libtorch() -> Option<(PathBuf, Option<String>)> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    let library = maps
        .lines()
        .filter_map(|line| line.split_whitespace().nth(5))
        .find(|path| {
            Path::new(path)
                .file_name()
                .is_some_and(|name| name.to_string_lossy().starts_with("libtorch_cpu"))
        })
        .map(PathBuf::from)?;
    let root = library.parent()?.parent()?;
    let version = libtorch_version(root);
    Some((library, version))
}

fn libtorch_version(root: &Path) -> Option<String> {
    if let Ok(text) = std::fs::read_to_string(root.join("build-version")) {
        return Some(text.trim().to_string());
    }
    let text = std::fs::read_to_string(root.join("version.py")).ok()?;
    let line = text.lines().find(|line| line.starts_with("__version__"))?;
    let value = line.split_once('=')?.1.trim();
    Some(value.trim_matches(|c| c == '\'' || c == '"').to_string())
}

fn check_cuda() -> Finding {
    let visible = match std::env::var("CUDA_VISIBLE_DEVICES") {
        Ok(value) => format!("CUDA_VISIBLE_DEVICES={value:?}"),
        Err(_) => "CUDA_VISIBLE_DEVICES unset".to_string(),
    };
    let count = if tch::Cuda::is_available() {
        tch::Cuda::device_count()
    } else {
        0
    };
    if count > 0 {
        let cudnn = if tch::Cuda::cudnn_is_available() {
            "cuDNN available"
        } else {
            "no cuDNN"
        };
        return Finding::ok(
            "cuda",
            format!("{count} CUDA device(s) seen by libtorch, {cudnn}, {visible}"),
        );
    }
    Finding::problem(
        Verdict::Warn,
        "cuda",
        format!("no CUDA device seen by libtorch, {visible}; workers offer CPU slots only"),
        "for GPU training install the NVIDIA driver and a CUDA build of torch, and check CUDA_VISIBLE_DEVICES",
    )
}

fn check_nvml() -> Finding {
    match tunefleet_telemetry::gpu::list_gpus() {
        Ok(gpus) if gpus.is_empty() => Finding::problem(
            Verdict::Warn,
            "nvml",
            "NVML loaded but lists no GPU",
            "check the NVIDIA driver with nvidia-smi",
        ),
        Ok(gpus) => {
            let described: Vec<String> = gpus
                .iter()
                .map(|gpu| {
                    format!(
                        "{} {} ({} of {} MiB in use)",
                        gpu.index,
                        gpu.name,
                        gpu.memory_used_bytes / (1024 * 1024),
                        gpu.memory_total_bytes / (1024 * 1024)
                    )
                })
                .collect();
            Finding::ok("nvml", format!("GPUs: {}", described.join(", ")))
        }
        Err(err) => Finding::problem(
            Verdict::Warn,
            "nvml",
            format!("{err}; GPU memory metrics are off"),
            "on a GPU host install the NVIDIA driver, which ships libnvidia-ml.so.1",
        ),
    }
}

async fn check_coordinator(
    urls: Option<&str>,
    tls: Result<Option<tonic::transport::ClientTlsConfig>, String>,
    token: Option<&str>,
) -> Vec<Finding> {
    let Some(urls) = urls else {
        return vec![Finding {
            verdict: Verdict::Skip,
            check: "coordinator",
            detail: "no --coordinator given".to_string(),
            fix: None,
        }];
    };
    let tls = match tls {
        Ok(tls) => tls,
        Err(err) => {
            return vec![Finding::problem(
                Verdict::Fail,
                "coordinator",
                err,
                "pass readable PEM files to --tls-ca, --tls-cert and --tls-key",
            )]
        }
    };
    let endpoints = match tunefleet_proto::coordinator_endpoints(urls, tls.as_ref()) {
        Ok(endpoints) => endpoints,
        Err(err) => {
            return vec![Finding::problem(
                Verdict::Fail,
                "coordinator",
                err,
                "pass --coordinator http://HOST:PORT, or https://HOST:PORT with --tls-ca",
            )]
        }
    };
    let mut findings = Vec::new();
    for endpoint in endpoints {
        findings.push(check_one_coordinator(endpoint, token).await);
    }
    findings
}

async fn check_one_coordinator(
    endpoint: tonic::transport::Endpoint,
    token: Option<&str>,
) -> Finding {
    let url = endpoint.uri().to_string();
    let url = url.trim_end_matches('/').to_string();
    let endpoint = endpoint.timeout(HEALTH_TIMEOUT);
    let channel = match endpoint.connect().await {
        Ok(channel) => channel,
        Err(err) => {
            let cause = error_chain(&err);
            return Finding::problem(
                Verdict::Fail,
                "coordinator",
                format!("failed to connect to the coordinator at {url}: {cause}"),
                "start the coordinator, or pass the address it listens on with --coordinator",
            );
        }
    };
    let mut request = tonic::Request::new(HealthCheckRequest {
        service: "tunefleet.v1.SweepService".to_string(),
    });
    if let Some(token) = token {
        match format!("Bearer {token}").parse() {
            Ok(value) => {
                request.metadata_mut().insert("authorization", value);
            }
            Err(_) => {
                return Finding::problem(
                    Verdict::Fail,
                    "coordinator",
                    "invalid token: it contains characters not allowed in a header",
                    "pass the token as printed by the coordinator's operator",
                )
            }
        }
    }
    match HealthClient::new(channel).check(request).await {
        Ok(response) => match response.into_inner().status() {
            ServingStatus::Serving => Finding::ok("coordinator", format!("{url} is SERVING")),
            status => Finding::problem(
                Verdict::Fail,
                "coordinator",
                format!("{url} reports {}", status.as_str_name()),
                "read the coordinator's log: it is degraded (its store failed) or no leader is elected",
            ),
        },
        Err(status) => Finding::problem(
            Verdict::Fail,
            "coordinator",
            format!("health check of {url} failed: {}", status.message()),
            "check that the address is a tunefleet coordinator and that the token is valid",
        ),
    }
}

/// Joins an error and its sources, such as "tcp connect error: Connection refused (os error
/// 111)", because tonic's top-level message alone names no cause.
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let message = cause.to_string();
        if !text.contains(&message) {
            text.push_str(": ");
            text.push_str(&message);
        }
        source = cause.source();
    }
    text
}

/// A certificate file read and parsed, kept with its DER bytes.
struct LoadedCert {
    path: PathBuf,
    der: Vec<u8>,
}

impl LoadedCert {
    fn parse(&self) -> X509Certificate<'_> {
        // `load_cert` already parsed these bytes successfully.
        x509_parser::parse_x509_certificate(&self.der)
            .expect("parsed when loaded")
            .1
    }
}

fn check_certificates(ca: Option<&Path>, cert: Option<&Path>, key: Option<&Path>) -> Vec<Finding> {
    if ca.is_none() && cert.is_none() && key.is_none() {
        return vec![Finding {
            verdict: Verdict::Skip,
            check: "tls",
            detail: "no --tls-ca, --tls-cert or --tls-key given".to_string(),
            fix: None,
        }];
    }
    let mut findings = Vec::new();
    let ca = ca.and_then(|path| load_cert("tls-ca", path, &mut findings));
    let cert = cert.and_then(|path| load_cert("tls-cert", path, &mut findings));
    if let Some(ca) = &ca {
        findings.push(check_validity("tls-ca", ca));
        if !ca.parse().is_ca() {
            findings.push(Finding::problem(
                Verdict::Warn,
                "tls-ca",
                format!(
                    "{} is not marked as a CA (basicConstraints CA:FALSE or absent)",
                    ca.path.display()
                ),
                "pass the certificate of the CA that signed the others",
            ));
        }
    }
    if let Some(cert) = &cert {
        findings.push(check_validity("tls-cert", cert));
    }
    if let (Some(ca), Some(cert)) = (&ca, &cert) {
        findings.push(check_signed_by(cert, ca));
    }
    match (key, &cert) {
        (Some(key), Some(cert)) => findings.push(check_key_matches(key, cert)),
        (Some(key), None) => findings.push(Finding::problem(
            Verdict::Warn,
            "tls-key",
            format!(
                "{} not checked: no readable --tls-cert to match it against",
                key.display()
            ),
            "pass --tls-cert with --tls-key",
        )),
        (None, Some(_)) => findings.push(Finding::problem(
            Verdict::Warn,
            "tls-key",
            "no --tls-key given: the key of --tls-cert is not checked",
            "pass --tls-key with --tls-cert",
        )),
        (None, None) => {}
    }
    findings
}

/// Reads the first certificate of a PEM file, or records why it failed.
fn load_cert(check: &'static str, path: &Path, findings: &mut Vec<Finding>) -> Option<LoadedCert> {
    let fail = |detail: String| {
        Finding::problem(
            Verdict::Fail,
            check,
            detail,
            "pass a readable PEM file with a BEGIN CERTIFICATE block",
        )
    };
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(err) => {
            findings.push(fail(format!("failed to read {}: {err}", path.display())));
            return None;
        }
    };
    let pem = Pem::iter_from_buffer(&bytes)
        .filter_map(Result::ok)
        .find(|pem| pem.label == "CERTIFICATE");
    let Some(pem) = pem else {
        findings.push(fail(format!("no certificate in {}", path.display())));
        return None;
    };
    if let Err(err) = x509_parser::parse_x509_certificate(&pem.contents) {
        findings.push(fail(format!(
            "invalid certificate in {}: {err}",
            path.display()
        )));
        return None;
    }
    Some(LoadedCert {
        path: path.to_path_buf(),
        der: pem.contents,
    })
}

fn check_validity(check: &'static str, loaded: &LoadedCert) -> Finding {
    let cert = loaded.parse();
    let validity = cert.validity();
    let now = x509_parser::time::ASN1Time::now();
    let path = loaded.path.display();
    let fix = "issue a new certificate and restart the services that use it";
    if now < validity.not_before {
        return Finding::problem(
            Verdict::Fail,
            check,
            format!("{path} is not valid before {}", validity.not_before),
            "check this host's clock, or wait until the certificate's start date",
        );
    }
    if now > validity.not_after {
        return Finding::problem(
            Verdict::Fail,
            check,
            format!("{path} expired at {}", validity.not_after),
            fix,
        );
    }
    let days_left = (validity.not_after.timestamp() - now.timestamp()) / 86_400;
    if days_left < EXPIRY_WARNING_DAYS {
        return Finding::problem(
            Verdict::Warn,
            check,
            format!(
                "{path} expires in {days_left} day(s), at {}",
                validity.not_after
            ),
            fix,
        );
    }
    Finding::ok(
        check,
        format!(
            "{path}: {} valid until {} ({days_left} days)",
            cert.subject(),
            validity.not_after
        ),
    )
}

fn check_signed_by(loaded_cert: &LoadedCert, loaded_ca: &LoadedCert) -> Finding {
    let cert = loaded_cert.parse();
    let ca = loaded_ca.parse();
    let fix = "issue the certificate from the CA in --tls-ca, or pass the CA that signed it";
    if cert.issuer() != ca.subject() {
        return Finding::problem(
            Verdict::Fail,
            "tls-chain",
            format!(
                "{} was issued by \"{}\", not by the CA \"{}\"",
                loaded_cert.path.display(),
                cert.issuer(),
                ca.subject()
            ),
            fix,
        );
    }
    match cert.verify_signature(Some(ca.public_key())) {
        Ok(()) => Finding::ok(
            "tls-chain",
            format!(
                "{} is signed by {}",
                loaded_cert.path.display(),
                loaded_ca.path.display()
            ),
        ),
        Err(err) => Finding::problem(
            Verdict::Fail,
            "tls-chain",
            format!(
                "the signature of {} does not verify with the key of {}: {err}",
                loaded_cert.path.display(),
                loaded_ca.path.display()
            ),
            fix,
        ),
    }
}

fn check_key_matches(key_path: &Path, loaded_cert: &LoadedCert) -> Finding {
    let text = match std::fs::read_to_string(key_path) {
        Ok(text) => text,
        Err(err) => {
            return Finding::problem(
                Verdict::Fail,
                "tls-key",
                format!("failed to read {}: {err}", key_path.display()),
                "pass a readable PEM private key",
            )
        }
    };
    let key = match rcgen::KeyPair::from_pem(&text) {
        Ok(key) => key,
        Err(err) => {
            // NOTE: ring, which parses the key here, reads only PKCS#8 keys, so a valid
            // PKCS#1 or SEC1 key gets a warning rather than a failure.
            return Finding::problem(
                Verdict::Warn,
                "tls-key",
                format!("could not parse {} as a PKCS#8 private key: {err}", key_path.display()),
                "convert it with `openssl pkcs8 -topk8 -nocrypt -in KEY -out KEY.pk8` to have it checked",
            );
        }
    };
    let cert = loaded_cert.parse();
    let cert_key = cert.public_key().raw;
    let key_spki = rcgen::PublicKeyData::subject_public_key_info(&key);
    if key_spki != cert_key {
        return Finding::problem(
            Verdict::Fail,
            "tls-key",
            format!(
                "{} is not the private key of {}",
                key_path.display(),
                loaded_cert.path.display()
            ),
            "pass the key generated with the certificate",
        );
    }
    Finding::ok(
        "tls-key",
        format!(
            "{} matches {}",
            key_path.display(),
            loaded_cert.path.display()
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finding_line_shows_fix() {
        let finding = Finding::problem(Verdict::Fail, "coordinator", "down", "start it");
        assert_eq!(finding.line(), "fail  coordinator: down (fix: start it)");
    }

    #[test]
    fn libtorch_version_reads_wheel_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("version.py"),
            "from typing import Optional\n__version__ = '2.11.0+cpu'\n",
        )
        .unwrap();
        assert_eq!(libtorch_version(dir.path()).as_deref(), Some("2.11.0+cpu"));
    }

    #[test]
    fn libtorch_version_reads_archive_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("build-version"), "2.11.0+cu128\n").unwrap();
        assert_eq!(
            libtorch_version(dir.path()).as_deref(),
            Some("2.11.0+cu128")
        );
    }
}
