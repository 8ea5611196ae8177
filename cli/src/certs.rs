//! `tunefleet certs`: `init` makes a development CA, certificates for a coordinator and its
//! workers, and a tokens file, so that a fleet can run with TLS, mutual TLS and tokens from the
//! start. `add-worker` signs a certificate for one more worker with that CA.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use tunefleet_coordinator::security::token_sha256_hex;

use crate::serve::ConfigError;

/// The common name of coordinator certificates. Coordinators sharing etcd trust each other by
/// it, so every coordinator certificate of a fleet carries the same one.
pub const COORDINATOR_COMMON_NAME: &str = "tunefleet-coordinator";
/// Random bytes in a generated token (256 bits).
const TOKEN_BYTES: usize = 32;
/// Validity of generated certificates, in days.
const VALIDITY_DAYS: u32 = 365;

#[derive(Debug, clap::Subcommand)]
pub enum CertsCommand {
    /// Generate a CA, a coordinator certificate, worker certificates and a tokens file.
    Init(InitArgs),
    /// Sign a certificate for one more worker with the CA that `init` wrote.
    AddWorker(AddWorkerArgs),
}

#[derive(Debug, clap::Args)]
pub struct AddWorkerArgs {
    /// The directory `init` wrote: reads ca.pem and ca.key, writes NAME.pem and NAME.key.
    #[arg(long)]
    dir: PathBuf,

    /// The worker's name, its certificate's common name: letters, digits, '.', '_' and '-'.
    name: String,
}

#[derive(Debug, clap::Args)]
pub struct InitArgs {
    /// Directory to write into; created when missing. Existing files are never overwritten.
    #[arg(long)]
    out: PathBuf,

    /// A DNS name or IP address clients use to reach the coordinator; repeat for more
    /// [default: localhost and 127.0.0.1].
    #[arg(long = "coordinator-host", value_name = "NAME")]
    coordinator_hosts: Vec<String>,

    /// Worker certificates to generate, named worker-1 to worker-N.
    #[arg(long, default_value_t = 2)]
    workers: u32,
}

/// Runs a `certs` verb.
pub fn certs(command: CertsCommand) -> anyhow::Result<()> {
    match command {
        CertsCommand::Init(args) => init(&args),
        CertsCommand::AddWorker(args) => add_worker(&args),
    }
}

fn init(args: &InitArgs) -> anyhow::Result<()> {
    let hosts = if args.coordinator_hosts.is_empty() {
        vec!["localhost".to_string(), "127.0.0.1".to_string()]
    } else {
        args.coordinator_hosts.clone()
    };
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("failed to create {}", args.out.display()))?;
    let out = Output { dir: &args.out };

    let ca_key = KeyPair::generate().context("failed to generate the CA key")?;
    let mut ca_params = CertificateParams::default();
    ca_params.distinguished_name = common_name("tunefleet development CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    set_validity(&mut ca_params);
    let ca_cert = ca_params.self_signed(&ca_key)?;
    out.write("ca.pem", ca_cert.pem().as_bytes(), false)?;
    out.write("ca.key", ca_key.serialize_pem().as_bytes(), true)?;
    let issuer = Issuer::new(ca_params, ca_key);

    let mut coordinator = CertificateParams::new(hosts.clone())
        .map_err(|err| ConfigError(format!("invalid --coordinator-host in {hosts:?}: {err}")))?;
    coordinator.distinguished_name = common_name(COORDINATOR_COMMON_NAME);
    // Client authentication too: a follower presents this certificate to the leader.
    coordinator.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    issue(&out, "coordinator", coordinator, &issuer)?;

    for index in 1..=args.workers {
        let name = format!("worker-{index}");
        let mut worker = CertificateParams::new(vec![name.clone()])?;
        worker.distinguished_name = common_name(&name);
        worker.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        issue(&out, &name, worker, &issuer)?;
    }

    let admin = random_token()?;
    let viewer = random_token()?;
    let tokens = format!(
        "# Bearer tokens of the sweep API, stored as SHA-256 digests of the token text.\n\
         # Add one: printf %s TOKEN | sha256sum\n\n\
         [[token]]\nname = \"admin\"\nrole = \"read-write\"\nsha256 = \"{}\"\n\n\
         [[token]]\nname = \"viewer\"\nrole = \"read-only\"\nsha256 = \"{}\"\n",
        token_sha256_hex(&admin),
        token_sha256_hex(&viewer)
    );
    out.write("tokens.toml", tokens.as_bytes(), false)?;
    out.write("admin.token", admin.as_bytes(), true)?;
    out.write("viewer.token", viewer.as_bytes(), true)?;

    crate::report::stdout_text(format_args!(
        "wrote a CA, a coordinator certificate for {}, {} worker certificates and tokens.toml to {}\n\
         coordinator: --tls-cert coordinator.pem --tls-key coordinator.key --tls-client-ca ca.pem --tokens tokens.toml\n\
         worker:      --tls-ca ca.pem --tls-cert worker-1.pem --tls-key worker-1.key\n\
         client:      --tls-ca ca.pem --token-file admin.token (or viewer.token, read-only)\n",
        hosts.join(", "),
        args.workers,
        args.out.display()
    ));
    Ok(())
}

fn add_worker(args: &AddWorkerArgs) -> anyhow::Result<()> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if args.name.is_empty() || args.name.starts_with('.') || !args.name.chars().all(allowed) {
        return Err(ConfigError(format!(
            "invalid worker name {:?}: expected letters, digits, '.', '_' and '-', not starting with '.'",
            args.name
        ))
        .into());
    }
    let read = |name: &str| {
        let path = args.dir.join(name);
        std::fs::read_to_string(&path)
            .map_err(|err| ConfigError(format!("failed to read {}: {err}", path.display())))
    };
    let ca_key = KeyPair::from_pem(&read("ca.key")?).context("invalid ca.key")?;
    let issuer = Issuer::from_ca_cert_pem(&read("ca.pem")?, ca_key).context("invalid ca.pem")?;
    let mut worker = CertificateParams::new(vec![args.name.clone()])?;
    worker.distinguished_name = common_name(&args.name);
    worker.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    issue(&Output { dir: &args.dir }, &args.name, worker, &issuer)?;
    crate::report::stdout_line(format_args!(
        "wrote {0}.pem and {0}.key to {1}",
        args.name,
        args.dir.display()
    ));
    Ok(())
}

/// Writes files into the output directory, never over an existing file.
struct Output<'a> {
    dir: &'a Path,
}

impl Output<'_> {
    fn write(&self, name: &str, content: &[u8], secret: bool) -> anyhow::Result<()> {
        use std::os::unix::fs::OpenOptionsExt;
        let path = self.dir.join(name);
        let mode = if secret { 0o600 } else { 0o644 };
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&path)
            .map_err(|err| {
                ConfigError(format!(
                    "failed to create {}: {err}; choose an empty --out directory",
                    path.display()
                ))
            })?;
        file.write_all(content)
            .with_context(|| format!("failed to write {}", path.display()))
    }
}

fn issue(
    out: &Output<'_>,
    name: &str,
    mut params: CertificateParams,
    issuer: &Issuer<'_, KeyPair>,
) -> anyhow::Result<()> {
    set_validity(&mut params);
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    let key = KeyPair::generate().with_context(|| format!("failed to generate the {name} key"))?;
    let cert = params
        .signed_by(&key, issuer)
        .with_context(|| format!("failed to sign the {name} certificate"))?;
    out.write(&format!("{name}.pem"), cert.pem().as_bytes(), false)?;
    out.write(&format!("{name}.key"), key.serialize_pem().as_bytes(), true)
}

fn common_name(name: &str) -> DistinguishedName {
    let mut distinguished_name = DistinguishedName::new();
    distinguished_name.push(DnType::CommonName, name);
    distinguished_name
}

fn set_validity(params: &mut CertificateParams) {
    const DAY: Duration = Duration::from_secs(24 * 60 * 60);
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let now = rcgen::date_time_ymd(1970, 1, 1) + since_epoch;
    // A day of slack covers hosts whose clocks run a little behind.
    params.not_before = now - DAY;
    params.not_after = now + DAY * VALIDITY_DAYS;
}

/// Returns a token of `TOKEN_BYTES` random bytes from the operating system, as hex.
fn random_token() -> anyhow::Result<String> {
    let mut bytes = [0u8; TOKEN_BYTES];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut urandom| std::io::Read::read_exact(&mut urandom, &mut bytes))
        .context("failed to read random bytes from /dev/urandom")?;
    Ok(bytes.iter().map(|byte| format!("{byte:02x}")).collect())
}
