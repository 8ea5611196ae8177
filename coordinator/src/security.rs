//! Access control of the coordinator: TLS settings, bearer tokens, worker certificate
//! identities and the checks every call passes before its handler runs.
//!
//! The sweep API authenticates clients by bearer token; each token is read-only or read-write.
//! The worker API authenticates workers by a client certificate signed by the fleet CA, and a
//! worker may act only for the worker id it registered with that certificate. Each API is open
//! when its credential is not configured, which `check_exposure` allows on loopback only.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tonic::metadata::MetadataValue;
use tonic::transport::{Certificate, Identity, ServerTlsConfig};
use tonic::{Request, Status};

/// Metadata key with which a follower passes the caller it authenticated on to the leader.
pub const PRINCIPAL_HEADER: &str = "tunefleet-principal";
/// Registrations one worker identity (or, without mutual TLS, one peer address) may make per
/// `REGISTRATION_WINDOW`. A worker registers once at start and again after losing its id.
pub const MAX_REGISTRATIONS_PER_WINDOW: u32 = 10;
pub const REGISTRATION_WINDOW: Duration = Duration::from_secs(60);
/// How long a client has to finish the TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Refusals logged per `REJECTION_LOG_WINDOW`; the rest are counted and summed up in the next line.
const MAX_REJECTION_LOGS_PER_WINDOW: u32 = 20;
const REJECTION_LOG_WINDOW: Duration = Duration::from_secs(10);
/// Registration windows remembered before old ones are dropped.
const MAX_REGISTRATION_KEYS: usize = 4096;

/// The permissions of a bearer token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// GetSweep, ListSweeps, WatchSweep, ListTrials, GetTrial, GetEnsemble and ListWorkers.
    ReadOnly,
    /// Everything read-only allows, plus CreateSweep, CancelSweep and ResumeSweep.
    ReadWrite,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Role::ReadOnly => "read-only",
            Role::ReadWrite => "read-write",
        }
    }
}

/// The authenticated caller of one call, stored in the request's extensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// A caller of an API that has no authentication configured.
    Anonymous,
    /// A client holding the named bearer token.
    Client { token_name: String, role: Role },
    /// A worker presenting a certificate signed by the fleet CA, named by its identity.
    Worker { identity: String },
}

impl Principal {
    fn encode(&self) -> String {
        match self {
            Principal::Anonymous => "anonymous".to_string(),
            Principal::Client { token_name, role } => {
                format!("client {} {token_name}", role.name())
            }
            Principal::Worker { identity } => format!("worker {identity}"),
        }
    }

    fn decode(text: &str) -> Option<Principal> {
        if text == "anonymous" {
            return Some(Principal::Anonymous);
        }
        if let Some(identity) = text.strip_prefix("worker ") {
            return Some(Principal::Worker {
                identity: identity.to_string(),
            });
        }
        let rest = text.strip_prefix("client ")?;
        let (role, token_name) = rest.split_once(' ')?;
        let role = match role {
            "read-only" => Role::ReadOnly,
            "read-write" => Role::ReadWrite,
            _ => return None,
        };
        Some(Principal::Client {
            token_name: token_name.to_string(),
            role,
        })
    }

    /// Adds this principal to a request that a follower forwards to the leader.
    pub fn attach<T>(&self, request: &mut Request<T>) -> Result<(), Status> {
        let value = MetadataValue::try_from(self.encode()).map_err(|_| {
            Status::internal("the caller's identity cannot be sent as gRPC metadata")
        })?;
        request.metadata_mut().insert(PRINCIPAL_HEADER, value);
        Ok(())
    }
}

/// Returns the caller that the access checks stored in `request`.
pub fn principal_of<T>(request: &Request<T>) -> Result<&Principal, Status> {
    request
        .extensions()
        .get::<Principal>()
        .ok_or_else(|| Status::permission_denied("no authenticated caller"))
}

/// Fails with `PERMISSION_DENIED` unless the caller may change sweeps.
pub fn require_write<T>(request: &Request<T>, rpc: &str) -> Result<(), Status> {
    match principal_of(request)? {
        Principal::Anonymous
        | Principal::Client {
            role: Role::ReadWrite,
            ..
        } => Ok(()),
        Principal::Client { token_name, .. } => {
            let status = Status::permission_denied(format!(
                "token {token_name:?} is read-only: {rpc} needs a read-write token"
            ));
            log_rejection(rpc, &format!("token {token_name:?}"), &status);
            Err(status)
        }
        Principal::Worker { identity } => {
            let status = Status::permission_denied(format!(
                "worker certificate {identity:?} cannot call {rpc}"
            ));
            log_rejection(rpc, &format!("certificate {identity:?}"), &status);
            Err(status)
        }
    }
}

/// The bearer tokens a coordinator accepts, stored as SHA-256 digests.
pub struct TokenSet {
    tokens: Vec<TokenEntry>,
}

struct TokenEntry {
    name: String,
    role: Role,
    sha256: [u8; 32],
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokensFile {
    token: Vec<TokenFileEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenFileEntry {
    name: String,
    role: Role,
    sha256: String,
}

impl TokenSet {
    /// Reads a tokens file: `[[token]]` tables with `name`, `role` ("read-only" or
    /// "read-write") and `sha256`, the hex SHA-256 digest of the token.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|err| format!("failed to read tokens file {}: {err}", path.display()))?;
        Self::parse(&text).map_err(|err| format!("invalid tokens file {}: {err}", path.display()))
    }

    /// Parses the text of a tokens file.
    pub fn parse(text: &str) -> Result<Self, String> {
        let file: TokensFile = toml::from_str(text).map_err(|err| err.to_string())?;
        if file.token.is_empty() {
            return Err("expected at least one [[token]]".to_string());
        }
        let mut tokens: Vec<TokenEntry> = Vec::with_capacity(file.token.len());
        for entry in file.token {
            if entry.name.is_empty() || tokens.iter().any(|t| t.name == entry.name) {
                return Err(format!(
                    "invalid token name {:?}: expected a unique non-empty name",
                    entry.name
                ));
            }
            let sha256 = decode_sha256(&entry.sha256).ok_or_else(|| {
                format!(
                    "invalid sha256 of token {:?}: expected 64 hex digits",
                    entry.name
                )
            })?;
            tokens.push(TokenEntry {
                name: entry.name,
                role: entry.role,
                sha256,
            });
        }
        Ok(Self { tokens })
    }

    /// Returns the name and role of `token`, comparing its digest with every stored digest in
    /// constant time.
    pub fn authenticate(&self, token: &str) -> Option<(&str, Role)> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut found = None;
        for entry in &self.tokens {
            if bool::from(entry.sha256.ct_eq(&digest)) {
                found = Some((entry.name.as_str(), entry.role));
            }
        }
        found
    }
}

/// Returns the hex SHA-256 digest of a token, as a tokens file stores it.
pub fn token_sha256_hex(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

fn decode_sha256(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 || !hex.is_ascii() {
        return None;
    }
    let mut digest = [0u8; 32];
    for (i, byte) in digest.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(digest)
}

/// Returns a short fingerprint of a secret for logs: the first 8 hex digits of its SHA-256
/// digest.
fn fingerprint(secret: &str) -> String {
    token_sha256_hex(secret)[..8].to_string()
}

/// The coordinator's TLS identity and the CA that signs worker certificates, as PEM.
#[derive(Clone)]
pub struct ServerTls {
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
    /// The fleet CA; when set, workers must present a certificate it signed.
    pub client_ca_pem: Option<Vec<u8>>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("mutual_tls", &self.client_ca_pem.is_some())
            .finish_non_exhaustive()
    }
}

/// Everything a coordinator checks about its callers. The default checks nothing.
#[derive(Clone, Default)]
pub struct ServerSecurity {
    pub tls: Option<ServerTls>,
    pub tokens: Option<Arc<TokenSet>>,
}

impl std::fmt::Debug for ServerSecurity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerSecurity")
            .field("tls", &self.tls)
            .field("num_tokens", &self.tokens.as_ref().map(|t| t.tokens.len()))
            .finish()
    }
}

impl ServerSecurity {
    /// Fails unless a coordinator listening on `listen` is safe to start: off loopback it needs
    /// TLS, a client CA and tokens, unless `allow_insecure` is set.
    pub fn check_exposure(&self, listen: SocketAddr, allow_insecure: bool) -> Result<(), String> {
        if listen.ip().is_loopback() || allow_insecure {
            return Ok(());
        }
        let mut missing = Vec::new();
        match &self.tls {
            None => missing.extend(["--tls-cert", "--tls-key", "--tls-client-ca"]),
            Some(tls) if tls.client_ca_pem.is_none() => missing.push("--tls-client-ca"),
            Some(_) => {}
        }
        if self.tokens.is_none() {
            missing.push("--tokens");
        }
        if missing.is_empty() {
            return Ok(());
        }
        Err(format!(
            "invalid listen address {listen}: a non-loopback address needs authentication, so set {} (see `tunefleet certs init`), listen on a loopback address, or pass --allow-insecure to serve anyone who can reach {}",
            missing.join(", "),
            listen.ip()
        ))
    }

    /// Returns the tonic TLS settings, or `None` to serve plaintext.
    pub fn tls_config(&self) -> Option<ServerTlsConfig> {
        let tls = self.tls.as_ref()?;
        let mut config = ServerTlsConfig::new()
            .identity(Identity::from_pem(&tls.cert_pem, &tls.key_pem))
            .timeout(TLS_HANDSHAKE_TIMEOUT);
        if let Some(ca) = &tls.client_ca_pem {
            // Clients of the sweep API come without a certificate; the worker API's check
            // rejects calls without one.
            // TODO: revoke single worker certificates. tonic 0.14's ServerTlsConfig takes no
            // revocation list, so a certificate stays valid until it expires or the CA changes.
            config = config
                .client_ca_root(Certificate::from_pem(ca))
                .client_auth_optional(true);
        }
        Some(config)
    }

    /// Builds the checks that every call passes.
    pub fn access_policy(&self) -> Result<Arc<AccessPolicy>, String> {
        let own_identity = match &self.tls {
            Some(tls) => Some(pem_identity(&tls.cert_pem)?),
            None => None,
        };
        Ok(Arc::new(AccessPolicy {
            tokens: self.tokens.clone(),
            mutual_tls: self.tls.as_ref().is_some_and(|t| t.client_ca_pem.is_some()),
            own_identity,
        }))
    }
}

/// Returns the identity of the first certificate in a PEM file: its subject's common name, or
/// its first DNS name when it has no common name.
pub fn pem_identity(pem: &[u8]) -> Result<String, String> {
    let (_, parsed) = x509_parser::pem::parse_x509_pem(pem)
        .map_err(|err| format!("invalid PEM certificate: {err}"))?;
    der_identity(&parsed.contents)
}

fn der_identity(der: &[u8]) -> Result<String, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|err| format!("invalid certificate: {err}"))?;
    let common_name = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok());
    if let Some(name) = common_name.filter(|name| !name.is_empty()) {
        return Ok(name.to_string());
    }
    let san = cert.subject_alternative_name().ok().flatten();
    let dns_name = san.and_then(|san| {
        san.value.general_names.iter().find_map(|name| match name {
            x509_parser::extensions::GeneralName::DNSName(dns) => Some(dns.to_string()),
            _ => None,
        })
    });
    dns_name.ok_or_else(|| "the certificate has neither a common name nor a DNS name".to_string())
}

/// The checks run on every call before its handler: who the caller is, whether it may use the
/// API at all, and how often it may register.
pub struct AccessPolicy {
    tokens: Option<Arc<TokenSet>>,
    mutual_tls: bool,
    /// The identity of this coordinator's own certificate. A peer presenting a certificate with
    /// the same identity is another coordinator, trusted to name the caller it forwards for.
    own_identity: Option<String>,
}

/// The credentials a caller presented.
struct Credentials {
    peer_identity: Option<String>,
    bearer: Option<String>,
    forwarded: Option<Principal>,
}

impl AccessPolicy {
    /// Authenticates a caller of the sweep API and stores its principal in the request.
    pub fn check_sweep_call(&self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let principal = self
            .sweep_principal(&request)
            .inspect_err(|status| log_rejection("sweep API", &peer_name(&request), status))?;
        request.extensions_mut().insert(principal);
        Ok(request)
    }

    /// Authenticates a caller of the worker API and stores its principal in the request.
    pub fn check_worker_call(&self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let principal = self
            .worker_principal(&request)
            .inspect_err(|status| log_rejection("worker API", &peer_name(&request), status))?;
        request.extensions_mut().insert(principal);
        Ok(request)
    }

    fn sweep_principal(&self, request: &Request<()>) -> Result<Principal, Status> {
        let credentials = self.credentials(request)?;
        if let Some(principal) = credentials.forwarded {
            return match principal {
                Principal::Worker { identity } => Err(worker_on_sweep_api(&identity)),
                principal => Ok(principal),
            };
        }
        if let Some(token) = &credentials.bearer {
            let tokens = self.tokens.as_ref().ok_or_else(|| {
                Status::unauthenticated("this coordinator accepts no bearer tokens")
            })?;
            let (name, role) = tokens.authenticate(token).ok_or_else(|| {
                Status::unauthenticated(format!(
                    "invalid bearer token (fingerprint {})",
                    fingerprint(token)
                ))
            })?;
            return Ok(Principal::Client {
                token_name: name.to_string(),
                role,
            });
        }
        if let Some(identity) = credentials.peer_identity {
            return Err(worker_on_sweep_api(&identity));
        }
        if self.tokens.is_some() {
            return Err(Status::unauthenticated(
                "missing bearer token: set --token, --token-file or TUNEFLEET_TOKEN",
            ));
        }
        Ok(Principal::Anonymous)
    }

    fn worker_principal(&self, request: &Request<()>) -> Result<Principal, Status> {
        let credentials = self.credentials(request)?;
        if let Some(principal) = credentials.forwarded {
            return match principal {
                Principal::Client { .. } => Err(token_on_worker_api()),
                principal => Ok(principal),
            };
        }
        if let Some(identity) = credentials.peer_identity {
            return Ok(Principal::Worker { identity });
        }
        if credentials.bearer.is_some() {
            return Err(token_on_worker_api());
        }
        if self.mutual_tls {
            return Err(Status::unauthenticated(
                "missing client certificate: the worker API needs a certificate signed by the fleet CA (set --tls-cert and --tls-key on the worker)",
            ));
        }
        Ok(Principal::Anonymous)
    }

    fn credentials(&self, request: &Request<()>) -> Result<Credentials, Status> {
        let peer_identity = match request.peer_certs() {
            Some(certs) if !certs.is_empty() => Some(
                der_identity(certs[0].as_ref())
                    .map_err(|err| Status::unauthenticated(format!("client certificate: {err}")))?,
            ),
            _ => None,
        };
        let bearer = match request.metadata().get("authorization") {
            None => None,
            Some(value) => {
                let text = value.to_str().ok();
                let token = text
                    .and_then(|t| t.strip_prefix("Bearer "))
                    .ok_or_else(|| {
                        Status::unauthenticated(
                            "invalid authorization header: expected \"Bearer TOKEN\"",
                        )
                    })?;
                Some(token.trim().to_string())
            }
        };
        let from_coordinator = peer_identity.is_some() && peer_identity == self.own_identity;
        let forwarded = match request.metadata().get(PRINCIPAL_HEADER) {
            Some(value) if from_coordinator => {
                let principal = value.to_str().ok().and_then(Principal::decode);
                Some(principal.ok_or_else(|| {
                    Status::invalid_argument(format!("invalid {PRINCIPAL_HEADER} metadata"))
                })?)
            }
            _ => None,
        };
        Ok(Credentials {
            peer_identity,
            bearer,
            forwarded,
        })
    }
}

/// Counts registrations per caller in fixed windows of `REGISTRATION_WINDOW`.
#[derive(Default)]
pub struct RegistrationLimiter {
    windows: Mutex<HashMap<String, (Instant, u32)>>,
}

impl RegistrationLimiter {
    /// Fails with `RESOURCE_EXHAUSTED` when `key` registered too often lately.
    pub fn check_registration_rate(&self, key: &str) -> Result<(), Status> {
        let now = Instant::now();
        let mut registrations = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        if registrations.len() >= MAX_REGISTRATION_KEYS {
            registrations.retain(|_, (start, _)| now.duration_since(*start) < REGISTRATION_WINDOW);
        }
        let (start, count) = registrations.entry(key.to_string()).or_insert((now, 0));
        if now.duration_since(*start) >= REGISTRATION_WINDOW {
            *start = now;
            *count = 0;
        }
        *count += 1;
        if *count > MAX_REGISTRATIONS_PER_WINDOW {
            let status = Status::resource_exhausted(format!(
                "too many RegisterWorker calls from {key}: at most {MAX_REGISTRATIONS_PER_WINDOW} per {} s; retry later",
                REGISTRATION_WINDOW.as_secs()
            ));
            log_rejection("RegisterWorker", key, &status);
            return Err(status);
        }
        Ok(())
    }
}

/// Returns the key that registrations of `principal` from `peer` are counted under.
///
/// NOTE: without mutual TLS, registrations forwarded by a follower count under the follower's
/// address, so workers that reach the leader through one follower share its limit.
pub fn registration_key(principal: &Principal, peer: Option<SocketAddr>) -> String {
    match principal {
        Principal::Worker { identity } => format!("certificate {identity:?}"),
        _ => {
            let ip = peer.map_or(IpAddr::from([0, 0, 0, 0]), |addr| addr.ip());
            format!("address {ip}")
        }
    }
}

fn worker_on_sweep_api(identity: &str) -> Status {
    Status::permission_denied(format!(
        "worker certificate {identity:?} cannot call the sweep API; clients authenticate with a bearer token"
    ))
}

fn token_on_worker_api() -> Status {
    Status::permission_denied(
        "a bearer token cannot call the worker API; workers authenticate with a client certificate",
    )
}

/// Refusals logged in the current window, shared by every coordinator in the process.
static REJECTIONS: Mutex<RejectionWindow> = Mutex::new(RejectionWindow {
    start: None,
    num_logged: 0,
    num_suppressed: 0,
});

struct RejectionWindow {
    start: Option<Instant>,
    num_logged: u32,
    num_suppressed: u64,
}

/// Logs a rejected call at warn, at most `MAX_REJECTION_LOGS_PER_WINDOW` lines per window. The
/// rest are counted, and the first line of the next window states how many were left out.
/// `caller` names the caller without a secret.
pub fn log_rejection(rpc: &str, caller: &str, status: &Status) {
    let mut window = REJECTIONS.lock().unwrap_or_else(|e| e.into_inner());
    let now = Instant::now();
    if window
        .start
        .is_none_or(|start| now.duration_since(start) >= REJECTION_LOG_WINDOW)
    {
        if window.num_suppressed > 0 {
            tracing::warn!(
                num_suppressed = window.num_suppressed,
                "more requests were rejected than logged"
            );
        }
        *window = RejectionWindow {
            start: Some(now),
            num_logged: 0,
            num_suppressed: 0,
        };
    }
    if window.num_logged >= MAX_REJECTION_LOGS_PER_WINDOW {
        window.num_suppressed += 1;
        return;
    }
    window.num_logged += 1;
    tracing::warn!(
        rpc,
        caller,
        code = ?status.code(),
        reason = status.message(),
        "request rejected"
    );
}

fn peer_name<T>(request: &Request<T>) -> String {
    request
        .remote_addr()
        .map_or_else(|| "unknown peer".to_string(), |addr| format!("peer {addr}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKENS: &str = r#"
[[token]]
name = "admin"
role = "read-write"
sha256 = "2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b"

[[token]]
name = "viewer"
role = "read-only"
sha256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
"#;

    #[test]
    fn token_digest_matches_sha256() {
        assert_eq!(
            token_sha256_hex("secret"),
            "2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b"
        );
    }

    #[test]
    fn tokens_authenticate_by_digest() {
        let tokens = TokenSet::parse(TOKENS).unwrap();
        assert_eq!(
            tokens.authenticate("secret"),
            Some(("admin", Role::ReadWrite))
        );
        assert_eq!(tokens.authenticate(""), Some(("viewer", Role::ReadOnly)));
        assert_eq!(tokens.authenticate("Secret"), None);
    }

    #[test]
    fn tokens_file_rejects_bad_digest() {
        let text = "[[token]]\nname = \"a\"\nrole = \"read-only\"\nsha256 = \"abc\"\n";
        let err = TokenSet::parse(text).err().unwrap();
        assert_eq!(err, "invalid sha256 of token \"a\": expected 64 hex digits");
    }

    #[test]
    fn tokens_file_rejects_duplicate_names() {
        let digest = token_sha256_hex("x");
        let entry =
            format!("[[token]]\nname = \"a\"\nrole = \"read-only\"\nsha256 = \"{digest}\"\n");
        let err = TokenSet::parse(&format!("{entry}{entry}")).err().unwrap();
        assert!(err.starts_with("invalid token name \"a\""), "{err}");
    }

    #[test]
    fn tokens_file_rejects_unknown_role() {
        let digest = token_sha256_hex("x");
        let text = format!("[[token]]\nname = \"a\"\nrole = \"admin\"\nsha256 = \"{digest}\"\n");
        assert!(TokenSet::parse(&text).is_err());
    }

    #[test]
    fn principal_round_trips() {
        let principals = [
            Principal::Anonymous,
            Principal::Worker {
                identity: "worker-1".into(),
            },
            Principal::Client {
                token_name: "ci bot".into(),
                role: Role::ReadOnly,
            },
        ];
        for principal in principals {
            assert_eq!(Principal::decode(&principal.encode()), Some(principal));
        }
    }

    #[test]
    fn exposure_allows_loopback_without_tls() {
        let security = ServerSecurity::default();
        assert!(security
            .check_exposure("127.0.0.1:7800".parse().unwrap(), false)
            .is_ok());
        assert!(security
            .check_exposure("[::1]:7800".parse().unwrap(), false)
            .is_ok());
    }

    #[test]
    fn exposure_rejects_open_non_loopback() {
        let security = ServerSecurity::default();
        let err = security
            .check_exposure("0.0.0.0:7800".parse().unwrap(), false)
            .unwrap_err();
        assert!(
            err.starts_with("invalid listen address 0.0.0.0:7800"),
            "{err}"
        );
        assert!(
            err.contains("set --tls-cert, --tls-key, --tls-client-ca, --tokens ("),
            "{err}"
        );
        assert!(err.contains("--allow-insecure"), "{err}");
    }

    fn security_with(client_ca: bool, tokens: bool) -> ServerSecurity {
        let tokens_text = format!(
            "[[token]]\nname = \"a\"\nrole = \"read-only\"\nsha256 = \"{}\"\n",
            token_sha256_hex("x")
        );
        ServerSecurity {
            tls: Some(ServerTls {
                cert_pem: b"cert".to_vec(),
                key_pem: b"key".to_vec(),
                client_ca_pem: client_ca.then(|| b"ca".to_vec()),
            }),
            tokens: tokens.then(|| Arc::new(TokenSet::parse(&tokens_text).unwrap())),
        }
    }

    #[test]
    fn exposure_names_each_missing_setting() {
        let listen = "10.0.0.5:7800".parse().unwrap();
        let err = security_with(false, true)
            .check_exposure(listen, false)
            .unwrap_err();
        assert!(err.contains("so set --tls-client-ca ("), "{err}");
        let err = security_with(true, false)
            .check_exposure(listen, false)
            .unwrap_err();
        assert!(err.contains("so set --tokens ("), "{err}");
    }

    #[test]
    fn exposure_allows_full_security() {
        let listen = "10.0.0.5:7800".parse().unwrap();
        assert!(security_with(true, true)
            .check_exposure(listen, false)
            .is_ok());
    }

    #[test]
    fn exposure_allows_insecure_opt_out() {
        let security = ServerSecurity::default();
        assert!(security
            .check_exposure("10.0.0.5:7800".parse().unwrap(), true)
            .is_ok());
    }

    #[test]
    fn registration_rate_is_limited() {
        let limiter = RegistrationLimiter::default();
        for _ in 0..MAX_REGISTRATIONS_PER_WINDOW {
            assert!(limiter.check_registration_rate("certificate \"w\"").is_ok());
        }
        let err = limiter
            .check_registration_rate("certificate \"w\"")
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::ResourceExhausted);
        assert!(limiter.check_registration_rate("certificate \"v\"").is_ok());
    }
}
