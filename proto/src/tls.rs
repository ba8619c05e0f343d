//! The TLS directory: PEM files named after identities, checked on load.
//!
//! Two layouts are read. A host's bundle holds `ca.pem` and its own `<role>-<name>.pem` and
//! `<role>-<name>.key` side by side. The operator's directory, written by `lbfleet pki init`,
//! holds `ca.pem` and `ca.key` and one bundle per identity in a `<role>-<name>/` subdirectory;
//! an identity is read from its bundle there. Only `ca.pem` and the caller's own pair are
//! read; `ca.key` stays in the operator's directory.

use std::fs;
use std::io;
use std::path::Path;
use std::path::PathBuf;

use thiserror::Error;
use x509_parser::certificate::X509Certificate;
use x509_parser::error::X509Error;
use x509_parser::extensions::GeneralName;
use x509_parser::extensions::ParsedExtension;
use x509_parser::pem::Pem;
use x509_parser::prelude::FromDer;

use crate::identity::Identity;
use crate::identity::IdentityError;
use crate::identity::Role;

/// The DNS name every coordinator certificate carries and every client checks, whatever address it dials.
pub const SERVER_NAME: &str = "coordinator.lbfleet";

/// File name of the CA certificate in a TLS directory.
pub const CA_CERT_FILE: &str = "ca.pem";

/// File name of the CA private key in a TLS directory.
pub const CA_KEY_FILE: &str = "ca.key";

/// A directory of PEM files laid out by `lbfleet pki init`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsDir {
    path: PathBuf,
}

/// The PEM text of one identity's certificate and key and of the CA, checked against each other.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pems {
    /// `ca.pem`.
    pub ca: Vec<u8>,
    /// The identity's certificate.
    pub cert: Vec<u8>,
    /// The identity's private key.
    pub key: Vec<u8>,
}

impl TlsDir {
    /// A TLS directory at `path`; nothing is read until a configuration is asked for.
    pub fn new(path: impl Into<PathBuf>) -> TlsDir {
        TlsDir { path: path.into() }
    }

    /// Where the directory is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Path of the CA certificate.
    pub fn ca_cert_path(&self) -> PathBuf {
        self.path.join(CA_CERT_FILE)
    }

    /// Path of the CA private key.
    pub fn ca_key_path(&self) -> PathBuf {
        self.path.join(CA_KEY_FILE)
    }

    /// The bundle directory of `identity` inside an operator's directory, e.g. `agent-lb-a/`.
    pub fn bundle_path(&self, identity: &Identity) -> PathBuf {
        self.path.join(identity.file_stem())
    }

    /// Path of `identity`'s certificate, e.g. `agent-lb-a.pem`: in its bundle when the directory
    /// has one for it, else in the directory itself.
    pub fn cert_path(&self, identity: &Identity) -> PathBuf {
        self.identity_file(identity, "pem")
    }

    /// Path of `identity`'s private key, e.g. `agent-lb-a.key`, found like [`TlsDir::cert_path`].
    pub fn key_path(&self, identity: &Identity) -> PathBuf {
        self.identity_file(identity, "key")
    }

    fn identity_file(&self, identity: &Identity, extension: &str) -> PathBuf {
        let file = format!("{}.{extension}", identity.file_stem());
        let bundle = self.bundle_path(identity);
        if bundle.is_dir() {
            bundle.join(file)
        } else {
            self.path.join(file)
        }
    }

    /// Reads `identity`'s pair and the CA, checking that the certificate names the identity,
    /// was issued by ca.pem, is valid now and, for a coordinator, carries [`SERVER_NAME`].
    pub fn load(&self, identity: &Identity) -> Result<Pems, TlsError> {
        let ca_path = self.ca_cert_path();
        let cert_path = self.cert_path(identity);
        let key_path = self.key_path(identity);
        let ca_pem = read(&ca_path)?;
        let cert_pem = read(&cert_path)?;
        let key_pem = read(&key_path)?;

        let ca_der = pem_block(&ca_path, &ca_pem, PemKind::Certificate)?;
        let ca = parse_cert(&ca_path, &ca_der)?;
        if !ca.is_ca() {
            return Err(TlsError::NotCa { path: ca_path });
        }

        let cert_der = pem_block(&cert_path, &cert_pem, PemKind::Certificate)?;
        let cert = parse_cert(&cert_path, &cert_der)?;
        let found = Identity::from_cert_der(&cert_der)
            .map_err(|source| TlsError::CertificateIdentity { path: cert_path.clone(), source })?;
        if &found != identity {
            return Err(TlsError::WrongIdentity { path: cert_path, expected: identity.clone(), found });
        }
        if !issued_by(&cert, &ca) {
            return Err(TlsError::NotIssuedByCa { path: cert_path, ca: ca_path });
        }
        if !cert.validity().is_valid() {
            return Err(TlsError::NotValidNow {
                path: cert_path,
                not_before: cert.validity().not_before.to_string(),
                not_after: cert.validity().not_after.to_string(),
            });
        }
        if identity.role == Role::Coordinator && !has_dns_name(&cert, SERVER_NAME) {
            return Err(TlsError::NoServerName { path: cert_path });
        }
        pem_block(&key_path, &key_pem, PemKind::PrivateKey)?;

        Ok(Pems { ca: ca_pem, cert: cert_pem, key: key_pem })
    }

    /// Checks that `identity`'s certificate and key are present, name it, were issued by ca.pem and are valid now.
    pub fn check(&self, identity: &Identity) -> Result<(), TlsError> {
        self.load(identity).map(|_| ())
    }

    /// The one admin identity in the directory or its bundles (an error lists the candidates if
    /// there are several); `preferred` picks one by name.
    pub fn admin_identity(&self, preferred: Option<&str>) -> Result<Identity, TlsError> {
        if let Some(name) = preferred {
            let identity = Identity::new(Role::Admin, name)?;
            let path = self.cert_path(&identity);
            if !path.exists() {
                return Err(TlsError::Missing { path });
            }
            return Ok(identity);
        }
        let mut names = self.admin_names()?;
        match names.len() {
            0 => Err(TlsError::NoAdmin { dir: self.path.clone() }),
            1 => Ok(Identity::new(Role::Admin, &names.remove(0))?),
            _ => Err(TlsError::SeveralAdmins { dir: self.path.clone(), names }),
        }
    }

    /// Names of the `admin-<name>.pem` files and `admin-<name>/` bundles, sorted and once each;
    /// entries whose name is not valid are ignored.
    fn admin_names(&self) -> Result<Vec<String>, TlsError> {
        let entries = fs::read_dir(&self.path).map_err(|source| match source.kind() {
            io::ErrorKind::NotFound => TlsError::Missing { path: self.path.clone() },
            _ => read_error(&self.path, source),
        })?;
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|source| read_error(&self.path, source))?;
            let file_name = entry.file_name();
            let Some(file_name) = file_name.to_str() else {
                continue;
            };
            let Some(rest) = file_name.strip_prefix(Role::Admin.as_str()).and_then(|rest| rest.strip_prefix('-'))
            else {
                continue;
            };
            let name = match rest.strip_suffix(".pem") {
                Some(name) => name,
                None if entry.path().join(format!("{file_name}.pem")).is_file() => rest,
                None => continue,
            };
            if Identity::new(Role::Admin, name).is_ok() {
                names.push(name.to_string());
            }
        }
        names.sort();
        names.dedup();
        Ok(names)
    }
}

/// Why a TLS directory cannot give the configuration asked for.
#[derive(Debug, Error)]
pub enum TlsError {
    /// A file the configuration needs is not there.
    #[error("{} does not exist: `lbfleet pki init` creates it", path.display())]
    Missing { path: PathBuf },
    /// A file or the directory cannot be read.
    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    /// A file holds no PEM block of the expected kind.
    #[error("{} holds no PEM {expected}", path.display())]
    NotPem { path: PathBuf, expected: &'static str },
    /// A certificate file does not hold a parsable X.509 certificate.
    #[error("{} is not a valid X.509 certificate: {source}", path.display())]
    BadCertificate { path: PathBuf, source: X509Error },
    /// A name asked for is not a valid identity.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// A certificate's common name is not an identity.
    #[error("{}: {source}", path.display())]
    CertificateIdentity { path: PathBuf, source: IdentityError },
    /// A certificate file names another identity than its file name says.
    #[error("{} is the certificate of {found}, not {expected}: the file is misnamed", path.display())]
    WrongIdentity { path: PathBuf, expected: Identity, found: Identity },
    /// `ca.pem` is not a CA certificate.
    #[error("{} is not a CA certificate", path.display())]
    NotCa { path: PathBuf },
    /// A certificate was issued by another CA than the directory's.
    #[error(
        "{} was not issued by {}: remove it and rerun `lbfleet pki init`",
        path.display(),
        ca.display()
    )]
    NotIssuedByCa { path: PathBuf, ca: PathBuf },
    /// A certificate has expired or is not valid yet.
    #[error(
        "{} is valid only from {not_before} to {not_after}: remove it and rerun `lbfleet pki init`",
        path.display()
    )]
    NotValidNow { path: PathBuf, not_before: String, not_after: String },
    /// A coordinator certificate lacks the name clients verify.
    #[error(
        "{} lacks the DNS name {SERVER_NAME} that clients check: remove it and rerun `lbfleet pki init`",
        path.display()
    )]
    NoServerName { path: PathBuf },
    /// The files load but TLS refuses them (e.g. a key that does not belong to the certificate).
    #[error("{}: {reason}", path.display())]
    Refused { path: PathBuf, reason: String },
    /// A server configuration was asked for a role that does not serve.
    #[error("{identity} cannot serve: only coordinator certificates carry the server name {SERVER_NAME}")]
    NotCoordinator { identity: Identity },
    /// The directory has no admin certificate.
    #[error(
        "no admin certificate (admin-<name>.pem) in {}: `lbfleet pki init --admin NAME` creates one",
        dir.display()
    )]
    NoAdmin { dir: PathBuf },
    /// The directory has several admin certificates and none was chosen.
    #[error("several admin certificates in {} ({}): choose one by name", dir.display(), names.join(", "))]
    SeveralAdmins { dir: PathBuf, names: Vec<String> },
}

#[derive(Clone, Copy)]
enum PemKind {
    Certificate,
    PrivateKey,
}

impl PemKind {
    fn describe(self) -> &'static str {
        match self {
            PemKind::Certificate => "certificate",
            PemKind::PrivateKey => "private key",
        }
    }

    fn matches(self, label: &str) -> bool {
        match self {
            PemKind::Certificate => label == "CERTIFICATE",
            // PKCS#8, PKCS#1 (RSA) and SEC1 (EC) keys are all accepted by tonic.
            PemKind::PrivateKey => label.ends_with("PRIVATE KEY"),
        }
    }
}

fn read_error(path: &Path, source: io::Error) -> TlsError {
    TlsError::Read { path: path.to_path_buf(), source }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    fs::read(path).map_err(|source| match source.kind() {
        io::ErrorKind::NotFound => TlsError::Missing { path: path.to_path_buf() },
        _ => read_error(path, source),
    })
}

/// The DER contents of the first PEM block of `kind` in `pem`.
fn pem_block(path: &Path, pem: &[u8], kind: PemKind) -> Result<Vec<u8>, TlsError> {
    Pem::iter_from_buffer(pem)
        .map_while(Result::ok)
        .find(|block| kind.matches(&block.label))
        .map(|block| block.contents)
        .ok_or_else(|| TlsError::NotPem { path: path.to_path_buf(), expected: kind.describe() })
}

fn parse_cert<'a>(path: &Path, der: &'a [u8]) -> Result<X509Certificate<'a>, TlsError> {
    X509Certificate::from_der(der)
        .map(|(_, cert)| cert)
        .map_err(|error| TlsError::BadCertificate { path: path.to_path_buf(), source: error.into() })
}

/// Whether `cert` names `ca` as its issuer, by subject and, when both carry one, by key identifier.
///
/// The TLS handshake verifies the signature; this only turns a leftover certificate of
/// another CA into a clear error before the handshake fails without saying why.
fn issued_by(cert: &X509Certificate<'_>, ca: &X509Certificate<'_>) -> bool {
    if cert.issuer().as_raw() != ca.subject().as_raw() {
        return false;
    }
    let authority_key = cert.iter_extensions().find_map(|ext| match ext.parsed_extension() {
        ParsedExtension::AuthorityKeyIdentifier(aki) => aki.key_identifier.as_ref().map(|id| id.0),
        _ => None,
    });
    let ca_key = ca.iter_extensions().find_map(|ext| match ext.parsed_extension() {
        ParsedExtension::SubjectKeyIdentifier(ski) => Some(ski.0),
        _ => None,
    });
    match (authority_key, ca_key) {
        (Some(authority_key), Some(ca_key)) => authority_key == ca_key,
        _ => true,
    }
}

fn has_dns_name(cert: &X509Certificate<'_>, name: &str) -> bool {
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return false;
    };
    san.value.general_names.iter().any(|general| match general {
        GeneralName::DNSName(dns) => dns.eq_ignore_ascii_case(name),
        _ => false,
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;
    use std::time::SystemTime;

    use rcgen::BasicConstraints;
    use rcgen::CertificateParams;
    use rcgen::DnType;
    use rcgen::ExtendedKeyUsagePurpose;
    use rcgen::IsCa;
    use rcgen::Issuer;
    use rcgen::KeyPair;

    use super::*;

    /// A fresh directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> TempDir {
            let nanos = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_nanos();
            let path = std::env::temp_dir().join(format!("lbfleet-tls-{tag}-{}-{nanos}", std::process::id()));
            fs::create_dir_all(&path).unwrap();
            TempDir(path)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    type Ca = Issuer<'static, KeyPair>;

    fn ca(dir: &Path, cn: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        fs::write(dir.join(CA_CERT_FILE), cert.pem()).unwrap();
        fs::write(dir.join(CA_KEY_FILE), key.serialize_pem()).unwrap();
        Issuer::new(params, key)
    }

    /// Writes `<stem>.pem`/`<stem>.key` for a certificate with common name `cn`, signed by `ca`.
    fn leaf(dir: &Path, ca: &Ca, stem: &str, cn: &str, sans: &[&str]) {
        let sans: Vec<String> = sans.iter().map(|s| s.to_string()).collect();
        let mut params = CertificateParams::new(sans).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        params.not_before = SystemTime::now().into();
        params.not_after = (SystemTime::now() + Duration::from_secs(3600)).into();
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, ca).unwrap();
        fs::write(dir.join(format!("{stem}.pem")), cert.pem()).unwrap();
        fs::write(dir.join(format!("{stem}.key")), key.serialize_pem()).unwrap();
    }

    fn id(role: Role, name: &str) -> Identity {
        Identity::new(role, name).unwrap()
    }

    #[test]
    fn file_names_follow_identities() {
        let tls = TlsDir::new("/etc/lbfleet/tls");
        assert_eq!(tls.path(), Path::new("/etc/lbfleet/tls"));
        assert_eq!(tls.ca_cert_path(), Path::new("/etc/lbfleet/tls/ca.pem"));
        assert_eq!(tls.cert_path(&id(Role::Coordinator, "1")), Path::new("/etc/lbfleet/tls/coordinator-1.pem"));
        assert_eq!(tls.key_path(&id(Role::Agent, "lb-a")), Path::new("/etc/lbfleet/tls/agent-lb-a.key"));
    }

    #[test]
    fn good_files_give_configurations() {
        let dir = TempDir::new("good");
        let ca = ca(&dir.0, "test CA");
        leaf(&dir.0, &ca, "coordinator-1", "coordinator:1", &[SERVER_NAME, "127.0.0.1"]);
        leaf(&dir.0, &ca, "agent-lb-a", "agent:lb-a", &[]);
        let tls = TlsDir::new(&dir.0);
        tls.check(&id(Role::Coordinator, "1")).unwrap();
        tls.check(&id(Role::Agent, "lb-a")).unwrap();
    }

    #[test]
    fn missing_files_say_how_to_create_them() {
        let dir = TempDir::new("missing");
        let tls = TlsDir::new(&dir.0);
        let error = tls.check(&id(Role::Agent, "lb-a")).unwrap_err();
        assert!(matches!(&error, TlsError::Missing { path } if path.ends_with(CA_CERT_FILE)), "{error}");
        assert!(error.to_string().contains("lbfleet pki init"), "{error}");

        ca(&dir.0, "test CA");
        let error = tls.check(&id(Role::Agent, "lb-a")).unwrap_err();
        assert!(matches!(&error, TlsError::Missing { path } if path.ends_with("agent-lb-a.pem")), "{error}");
    }

    #[test]
    fn misnamed_certificate_is_reported() {
        let dir = TempDir::new("misnamed");
        let ca = ca(&dir.0, "test CA");
        leaf(&dir.0, &ca, "agent-lb-a", "agent:lb-b", &[]);
        let error = TlsDir::new(&dir.0).check(&id(Role::Agent, "lb-a")).unwrap_err();
        assert!(
            matches!(&error, TlsError::WrongIdentity { found, .. } if found == &id(Role::Agent, "lb-b")),
            "{error}"
        );
        assert!(error.to_string().contains("agent-lb-a.pem is the certificate of agent:lb-b, not agent:lb-a"));
    }

    #[test]
    fn certificate_of_another_ca_is_reported() {
        let dir = TempDir::new("other-ca");
        let other = TempDir::new("other-ca-2");
        let old = ca(&other.0, "test CA");
        // Same CA name, new key: only the key identifier tells them apart.
        ca(&dir.0, "test CA");
        leaf(&dir.0, &old, "agent-lb-a", "agent:lb-a", &[]);
        let error = TlsDir::new(&dir.0).check(&id(Role::Agent, "lb-a")).unwrap_err();
        assert!(matches!(error, TlsError::NotIssuedByCa { .. }), "{error}");
    }

    #[test]
    fn coordinator_needs_server_name_and_only_coordinators_serve() {
        let dir = TempDir::new("server-name");
        let ca = ca(&dir.0, "test CA");
        leaf(&dir.0, &ca, "coordinator-1", "coordinator:1", &["localhost"]);
        leaf(&dir.0, &ca, "agent-lb-a", "agent:lb-a", &[]);
        let tls = TlsDir::new(&dir.0);
        let error = tls.check(&id(Role::Coordinator, "1")).unwrap_err();
        assert!(matches!(error, TlsError::NoServerName { .. }), "{error}");
        let open = std::sync::Arc::new(|_: &crate::identity::Certified| Ok(()));
        let error = crate::credentials::Credentials::server(&tls, &id(Role::Agent, "lb-a"), open).unwrap_err();
        assert!(matches!(error, TlsError::NotCoordinator { .. }), "{error}");
    }

    #[test]
    fn garbage_files_are_reported() {
        let dir = TempDir::new("garbage");
        let ca = ca(&dir.0, "test CA");
        leaf(&dir.0, &ca, "agent-lb-a", "agent:lb-a", &[]);
        let tls = TlsDir::new(&dir.0);
        fs::write(dir.0.join("agent-lb-a.key"), "not a key").unwrap();
        let error = tls.check(&id(Role::Agent, "lb-a")).unwrap_err();
        assert!(matches!(error, TlsError::NotPem { expected: "private key", .. }), "{error}");
        fs::write(dir.0.join(CA_CERT_FILE), "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n").unwrap();
        let error = tls.check(&id(Role::Agent, "lb-a")).unwrap_err();
        assert!(matches!(error, TlsError::BadCertificate { .. }), "{error}");
    }

    #[test]
    fn admin_identity_is_found_or_chosen() {
        let dir = TempDir::new("admin");
        let tls = TlsDir::new(&dir.0);
        let error = tls.admin_identity(None).unwrap_err();
        assert!(matches!(error, TlsError::NoAdmin { .. }), "{error}");

        let ca = ca(&dir.0, "test CA");
        leaf(&dir.0, &ca, "agent-lb-a", "agent:lb-a", &[]);
        leaf(&dir.0, &ca, "admin-ops", "admin:ops", &[]);
        assert_eq!(tls.admin_identity(None).unwrap(), id(Role::Admin, "ops"));

        leaf(&dir.0, &ca, "admin-alice", "admin:alice", &[]);
        fs::write(dir.0.join("admin-Bad Name.pem"), "").unwrap();
        let error = tls.admin_identity(None).unwrap_err();
        assert!(matches!(&error, TlsError::SeveralAdmins { names, .. } if names == &["alice", "ops"]), "{error}");
        assert!(error.to_string().contains("(alice, ops)"), "{error}");
        assert_eq!(tls.admin_identity(Some("alice")).unwrap(), id(Role::Admin, "alice"));
        let error = tls.admin_identity(Some("bob")).unwrap_err();
        assert!(matches!(error, TlsError::Missing { .. }), "{error}");
        let error = tls.admin_identity(Some("Bob")).unwrap_err();
        assert!(matches!(error, TlsError::Identity(IdentityError::InvalidName { .. })), "{error}");
    }
}
