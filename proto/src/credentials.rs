//! One identity's certificates as the running daemon uses them, renewed without a restart.
//!
//! [`Credentials`] turns a [`TlsDir`] into rustls configurations and keeps the current ones.
//! Every new connection asks for the current configuration, so a renewed certificate, key or
//! CA is used from the next handshake on. [`Credentials::watch`] re-reads the files when they
//! change and on SIGHUP; a set of files that does not load (half copied, mismatched, expired)
//! is reported and the previous certificates stay in use.
//!
//! A coordinator also gives a [`Gate`]: every client certificate that chains to the CA is then
//! put to it during the handshake, which is where revoked certificates are refused.

use std::fmt;
use std::sync::Arc;
use std::sync::RwLock;
use std::time::Duration;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::PrivateKeyDer;
use rustls::pki_types::UnixTime;
use rustls::server::danger::ClientCertVerified;
use rustls::server::danger::ClientCertVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::CertificateError;
use rustls::ClientConfig;
use rustls::DigitallySignedStruct;
use rustls::DistinguishedName;
use rustls::RootCertStore;
use rustls::ServerConfig;
use rustls::SignatureScheme;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::info;
use tracing::warn;

use crate::identity::Certified;
use crate::identity::Identity;
use crate::identity::Role;
use crate::tls::Pems;
use crate::tls::TlsDir;
use crate::tls::TlsError;

/// How often [`Credentials::watch`] looks at the files; SIGHUP re-reads them at once.
pub const POLL_INTERVAL: Duration = Duration::from_secs(2);

/// ALPN for gRPC: HTTP/2 only.
const ALPN_H2: &[u8] = b"h2";

/// Decides whether a client certificate that chains to the CA may connect; `Err` says why not.
pub type Gate = Arc<dyn Fn(&Certified) -> Result<(), String> + Send + Sync>;

/// The certificates in use by one identity, and the files they come from.
pub struct Credentials {
    dir: TlsDir,
    identity: Identity,
    gate: Option<Gate>,
    current: RwLock<Arc<Material>>,
    /// Bumped on every renewal, so holders of long-lived connections can reconnect.
    renewals: watch::Sender<u64>,
}

/// What one successful load of the files gave.
struct Material {
    pems: Pems,
    certified: Certified,
    client: Arc<ClientConfig>,
    /// Only for coordinators: the others never serve.
    server: Option<Arc<ServerConfig>>,
}

/// What [`Credentials::reload`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reloaded {
    /// The files hold what is in use already.
    Unchanged,
    /// New files are in use from the next handshake on.
    Renewed {
        /// The serial of the certificate now in use.
        serial: String,
    },
}

impl Credentials {
    /// Loads `identity`'s certificates for a client (agent, operator, or a coordinator calling its peers).
    pub fn client(dir: &TlsDir, identity: &Identity) -> Result<Arc<Credentials>, TlsError> {
        Credentials::load(dir, identity, None)
    }

    /// Loads a coordinator's certificates for serving and calling; `gate` vets every client certificate.
    pub fn server(dir: &TlsDir, identity: &Identity, gate: Gate) -> Result<Arc<Credentials>, TlsError> {
        if identity.role != Role::Coordinator {
            return Err(TlsError::NotCoordinator { identity: identity.clone() });
        }
        Credentials::load(dir, identity, Some(gate))
    }

    fn load(dir: &TlsDir, identity: &Identity, gate: Option<Gate>) -> Result<Arc<Credentials>, TlsError> {
        let material = build(dir, identity, gate.as_ref(), dir.load(identity)?)?;
        Ok(Arc::new(Credentials {
            dir: dir.clone(),
            identity: identity.clone(),
            gate,
            current: RwLock::new(Arc::new(material)),
            renewals: watch::channel(0).0,
        }))
    }

    /// Whose certificates these are.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// The serial of the certificate in use.
    pub fn serial(&self) -> String {
        self.material().certified.serial.clone()
    }

    /// The client configuration for the next connection.
    pub fn client_config(&self) -> Arc<ClientConfig> {
        self.material().client.clone()
    }

    /// The server configuration for the next accepted connection (coordinators only).
    pub fn server_config(&self) -> Option<Arc<ServerConfig>> {
        self.material().server.clone()
    }

    /// Changes whenever renewed certificates come into use.
    pub fn renewals(&self) -> watch::Receiver<u64> {
        self.renewals.subscribe()
    }

    fn material(&self) -> Arc<Material> {
        self.current.read().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }

    /// Reads the files again and uses them if they differ and load; on error the old ones stay.
    pub fn reload(&self) -> Result<Reloaded, TlsError> {
        let pems = self.dir.load(&self.identity)?;
        if pems == self.material().pems {
            return Ok(Reloaded::Unchanged);
        }
        let material = build(&self.dir, &self.identity, self.gate.as_ref(), pems)?;
        let serial = material.certified.serial.clone();
        *self.current.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(material);
        self.renewals.send_modify(|count| *count += 1);
        Ok(Reloaded::Renewed { serial })
    }

    /// Re-reads the files every [`POLL_INTERVAL`] and on SIGHUP, logging what changed and what failed.
    pub fn watch(self: &Arc<Self>) -> JoinHandle<()> {
        let credentials = self.clone();
        // Listening starts before this returns: from then on SIGHUP no longer ends the process.
        let mut hangups = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(signal) => Some(signal),
            Err(error) => {
                warn!(%error, "cannot listen for SIGHUP; certificates are still re-read every few seconds");
                None
            }
        };
        tokio::spawn(async move {
            let mut last_error = None;
            loop {
                let asked = tokio::select! {
                    _ = tokio::time::sleep(POLL_INTERVAL) => false,
                    Some(()) = async { match hangups.as_mut() { Some(signal) => signal.recv().await, None => None } } => true,
                };
                match credentials.reload() {
                    Ok(Reloaded::Renewed { serial }) => {
                        info!(identity = %credentials.identity, %serial, "renewed certificates in use from the next connection");
                        last_error = None;
                    }
                    Ok(Reloaded::Unchanged) => {
                        if asked {
                            info!(identity = %credentials.identity, "SIGHUP: certificates unchanged");
                        }
                        last_error = None;
                    }
                    Err(error) => {
                        // Said once per distinct failure: files being copied fail for a moment.
                        let text = error.to_string();
                        if asked || last_error.as_ref() != Some(&text) {
                            warn!(identity = %credentials.identity, error = %text, "new certificate files not used; keeping the current ones");
                        }
                        last_error = Some(text);
                    }
                }
            }
        })
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials").field("dir", &self.dir).field("identity", &self.identity).finish_non_exhaustive()
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// rustls's refusal of the files, naming the directory they came from.
fn refused(dir: &TlsDir, identity: &Identity, error: impl fmt::Display) -> TlsError {
    TlsError::Refused { path: dir.cert_path(identity), reason: error.to_string() }
}

fn build(dir: &TlsDir, identity: &Identity, gate: Option<&Gate>, pems: Pems) -> Result<Material, TlsError> {
    let refused = |error: &dyn fmt::Display| refused(dir, identity, error);
    let ca = CertificateDer::from_pem_slice(&pems.ca).map_err(|error| refused(&error))?;
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(&pems.cert).collect::<Result<_, _>>().map_err(|error| refused(&error))?;
    let key = PrivateKeyDer::from_pem_slice(&pems.key).map_err(|error| refused(&error))?;
    let leaf = chain.first().ok_or_else(|| refused(&"no certificate"))?;
    let certified = Certified::from_der(leaf).map_err(|error| refused(&error))?;
    let mut roots = RootCertStore::empty();
    roots.add(ca).map_err(|error| refused(&error))?;
    let roots = Arc::new(roots);

    // The key must belong to the certificate: rustls checks it here, so a renewal caught
    // between writing the new key and the new certificate is refused and retried.
    let mut client = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|error| refused(&error))?
        .with_root_certificates(roots.clone())
        .with_client_auth_cert(chain.clone(), key.clone_key())
        .map_err(|error| refused(&error))?;
    client.alpn_protocols = vec![ALPN_H2.to_vec()];

    let server = match gate {
        None => None,
        Some(gate) => {
            let webpki = WebPkiClientVerifier::builder_with_provider(roots, provider())
                .build()
                .map_err(|error| refused(&error))?;
            let verifier = Arc::new(GatedVerifier { webpki, gate: gate.clone() });
            let mut server = ServerConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .map_err(|error| refused(&error))?
                .with_client_cert_verifier(verifier)
                .with_single_cert(chain, key)
                .map_err(|error| refused(&error))?;
            server.alpn_protocols = vec![ALPN_H2.to_vec()];
            Some(Arc::new(server))
        }
    };
    Ok(Material { pems, certified, client: Arc::new(client), server })
}

/// The CA's verdict on a client certificate, then the gate's.
struct GatedVerifier {
    webpki: Arc<dyn ClientCertVerifier>,
    gate: Gate,
}

impl fmt::Debug for GatedVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GatedVerifier").field("webpki", &self.webpki).finish_non_exhaustive()
    }
}

impl ClientCertVerifier for GatedVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.webpki.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self.webpki.verify_client_cert(end_entity, intermediates, now)?;
        let certified = Certified::from_der(end_entity).map_err(|error| {
            rustls::Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(Arc::new(error))))
        })?;
        match (self.gate)(&certified) {
            Ok(()) => Ok(verified),
            Err(reason) => {
                warn!(identity = %certified.identity, serial = %certified.serial, %reason, "client certificate refused");
                Err(rustls::Error::InvalidCertificate(CertificateError::Revoked))
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}
