//! `lbfleet pki init` and `lbfleet pki renew`: a development CA and one certificate per
//! identity, in the layout `lbfleet_proto::tls::TlsDir` reads.
//!
//! The operator's directory keeps `ca.pem` and `ca.key`, and one bundle per identity:
//! `<role>-<name>/` with `ca.pem` and that identity's `.pem` and `.key` only. A host gets its
//! bundle and nothing else, so no host ever holds the CA key or another identity's key.
//!
//! `init` never overwrites: the CA and every certificate already present are checked and
//! kept, so agents can be added later by running it again with more names. `renew` replaces
//! an identity's key and certificate in place; the daemons pick them up without a restart.

use std::collections::HashSet;
use std::fs;
use std::io;
use std::io::Write;
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::path::PathBuf;
use std::time::Duration;
use std::time::SystemTime;

use lbfleet_proto::identity::serial_hex;
use lbfleet_proto::tls::TlsDir;
use lbfleet_proto::tls::TlsError;
use lbfleet_proto::tls::CA_CERT_FILE;
use lbfleet_proto::tls::SERVER_NAME;
use lbfleet_proto::Identity;
use lbfleet_proto::Role;
use rcgen::BasicConstraints;
use rcgen::CertificateParams;
use rcgen::CertifiedIssuer;
use rcgen::DistinguishedName;
use rcgen::DnType;
use rcgen::ExtendedKeyUsagePurpose;
use rcgen::IsCa;
use rcgen::Issuer;
use rcgen::KeyPair;
use rcgen::KeyUsagePurpose;
use rcgen::PublicKeyData;
use thiserror::Error;
use x509_parser::certificate::X509Certificate;
use x509_parser::error::X509Error;
use x509_parser::pem::Pem;

const DAY: Duration = Duration::from_secs(24 * 60 * 60);
/// Ten years: the CA outlives every certificate it signs.
const CA_VALIDITY: Duration = DAY.saturating_mul(3652);
/// Two years.
const LEAF_VALIDITY: Duration = DAY.saturating_mul(731);
/// Certificates start being valid a day early so that hosts with a lagging clock accept them.
const BACKDATE: Duration = DAY;
const CA_COMMON_NAME: &str = "lbfleet development CA";

/// What `init` or `renew` did for one identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issued {
    /// The identity the certificate names.
    pub identity: Identity,
    /// Where its certificate is; the key sits next to it with the `.key` extension.
    pub cert: PathBuf,
    /// The identity's bundle: the directory to copy to its host.
    pub bundle: PathBuf,
    /// The certificate's serial, as revocations name it.
    pub serial: String,
    /// Whether this run created it, rather than finding it in place.
    pub created: bool,
}

/// Creates the CA if `dir` has none (reusing an existing ca.pem/ca.key), then a bundle for every
/// identity that has none yet; existing ones are checked and kept (a pair left directly in `dir`
/// by an older layout is copied into its bundle). Keys are written with mode 0600. Returns what
/// exists for each identity asked (duplicates once).
pub fn init(dir: &Path, identities: &[Identity]) -> Result<Vec<Issued>, PkiError> {
    let tls = TlsDir::new(dir);
    let mut seen = HashSet::new();
    let identities: Vec<&Identity> = identities.iter().filter(|id| seen.insert(*id)).collect();

    // Everything is checked before anything is written, so an error leaves the directory as it was.
    let mut missing = Vec::new();
    let mut present = Vec::new();
    for identity in &identities {
        let (cert, key) = (tls.cert_path(identity), tls.key_path(identity));
        match (exists(&cert)?, exists(&key)?) {
            (true, true) => present.push(*identity),
            (false, false) => missing.push(*identity),
            (true, false) => return Err(PkiError::Incomplete { present: cert, missing: key }),
            (false, true) => return Err(PkiError::Incomplete { present: key, missing: cert }),
        }
    }

    let (ca_cert, ca_key) = (tls.ca_cert_path(), tls.ca_key_path());
    let new_ca = match (exists(&ca_cert)?, exists(&ca_key)?) {
        (true, true) => false,
        (false, false) => {
            if let Some(identity) = present.first() {
                return Err(PkiError::NoCa { dir: dir.to_path_buf(), cert: tls.cert_path(identity) });
            }
            true
        }
        // A directory copied to a host without the CA key is fine as long as nothing is issued.
        (true, false) if missing.is_empty() => false,
        (true, false) => return Err(PkiError::CaKeyMissing { cert: ca_cert, key: ca_key }),
        (false, true) => return Err(PkiError::CaCertMissing { cert: ca_cert, key: ca_key }),
    };

    for identity in &present {
        tls.check(identity)?;
        check_key_matches(&tls.cert_path(identity), &tls.key_path(identity))?;
    }

    let created_ca = if new_ca {
        create_dir(dir)?;
        let ca = new_authority()?;
        write_pair(&ca_cert, &ca.pem(), &ca_key, &ca.key().serialize_pem())?;
        Some(ca)
    } else {
        None
    };
    for identity in &present {
        ensure_bundle(&tls, identity)?;
    }
    if !missing.is_empty() {
        let loaded_ca;
        let ca: &Issuer<'_, KeyPair> = match &created_ca {
            Some(ca) => ca,
            None => {
                loaded_ca = load_authority(&ca_cert, &ca_key)?;
                &loaded_ca
            }
        };
        for identity in &missing {
            let (cert, key) = issue(identity, ca)?;
            let bundle = tls.bundle_path(identity);
            create_dir(&bundle)?;
            copy_ca(&tls, &bundle)?;
            write_pair(&tls.cert_path(identity), &cert, &tls.key_path(identity), &key)?;
        }
    }

    identities.into_iter().map(|identity| issued(&tls, identity, missing.contains(&identity))).collect()
}

/// Replaces each identity's key and certificate in its bundle with new ones from the CA in `dir`.
/// Each file is replaced by a rename, so a daemon reading the bundle sees the old pair or the new
/// one; until it has both it keeps using the old one.
pub fn renew(dir: &Path, identities: &[Identity]) -> Result<Vec<Issued>, PkiError> {
    let tls = TlsDir::new(dir);
    let (ca_cert, ca_key) = (tls.ca_cert_path(), tls.ca_key_path());
    if !exists(&ca_key)? {
        return Err(PkiError::CaKeyMissing { cert: ca_cert, key: ca_key });
    }
    for identity in identities {
        let bundle = tls.bundle_path(identity);
        if !exists(&bundle)? {
            return Err(PkiError::NotIssued { identity: identity.clone(), bundle });
        }
    }
    let ca = load_authority(&ca_cert, &ca_key)?;
    let mut renewed = Vec::new();
    for identity in identities {
        let (cert, key) = issue(identity, &ca)?;
        copy_ca(&tls, &tls.bundle_path(identity))?;
        replace(&tls.key_path(identity), &key, 0o600)?;
        replace(&tls.cert_path(identity), &cert, 0o644)?;
        renewed.push(issued(&tls, identity, true)?);
    }
    Ok(renewed)
}

/// A new key and a certificate for `identity` signed by `ca`, both as PEM.
fn issue(identity: &Identity, ca: &Issuer<'_, KeyPair>) -> Result<(String, String), PkiError> {
    let key = KeyPair::generate().map_err(|source| generate_error(identity, source))?;
    let cert = leaf_params(identity)
        .and_then(|params| params.signed_by(&key, ca))
        .map_err(|source| generate_error(identity, source))?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Makes sure `identity` has a bundle: a pair found directly in the directory is copied into one.
fn ensure_bundle(tls: &TlsDir, identity: &Identity) -> Result<(), PkiError> {
    let bundle = tls.bundle_path(identity);
    if exists(&bundle)? {
        return copy_ca(tls, &bundle);
    }
    let (cert, key) = (tls.cert_path(identity), tls.key_path(identity));
    let (cert_pem, key_pem) = (read_string(&cert)?, read_string(&key)?);
    create_dir(&bundle)?;
    copy_ca(tls, &bundle)?;
    write_pair(&tls.cert_path(identity), &cert_pem, &tls.key_path(identity), &key_pem)
}

/// Puts the CA certificate into a bundle, or refreshes it when the CA's changed.
fn copy_ca(tls: &TlsDir, bundle: &Path) -> Result<(), PkiError> {
    let ca = read_string(&tls.ca_cert_path())?;
    let copy = bundle.join(CA_CERT_FILE);
    if exists(&copy)? && read_string(&copy)? == ca {
        return Ok(());
    }
    replace(&copy, &ca, 0o644)
}

fn issued(tls: &TlsDir, identity: &Identity, created: bool) -> Result<Issued, PkiError> {
    let cert = tls.cert_path(identity);
    let serial = inspect_certificate(&cert, &read_string(&cert)?, |cert| serial_hex(cert.raw_serial()))?;
    Ok(Issued { identity: identity.clone(), cert, bundle: tls.bundle_path(identity), serial, created })
}

/// Why `init` could not create or keep a file.
#[derive(Debug, Error)]
pub enum PkiError {
    /// The directory cannot be created.
    #[error("cannot create {}: {source}", path.display())]
    CreateDir { path: PathBuf, source: io::Error },
    /// A file cannot be read or looked at.
    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    /// A file cannot be written.
    #[error("cannot write {}: {source}", path.display())]
    Write { path: PathBuf, source: io::Error },
    /// Certificates need issuing but only the CA certificate is here.
    #[error(
        "cannot issue certificates: {} exists but {} does not; run this where the CA key is",
        cert.display(),
        key.display()
    )]
    CaKeyMissing { cert: PathBuf, key: PathBuf },
    /// The CA key is here without its certificate.
    #[error(
        "{} exists but {} does not: restore the CA certificate, or remove the key to start a new CA",
        key.display(),
        cert.display()
    )]
    CaCertMissing { cert: PathBuf, key: PathBuf },
    /// Certificates are here but their CA is not, so none of them could be verified.
    #[error(
        "{} exists but {} has no CA: restore ca.pem and ca.key, or remove the old certificates",
        cert.display(),
        dir.display()
    )]
    NoCa { dir: PathBuf, cert: PathBuf },
    /// Only one file of a certificate/key pair is here.
    #[error("{} exists but {} does not: remove it and rerun `lbfleet pki init`", present.display(), missing.display())]
    Incomplete { present: PathBuf, missing: PathBuf },
    /// `renew` was asked for an identity `init` never issued.
    #[error("{identity} has no bundle at {}: issue it with `lbfleet pki init` first", bundle.display())]
    NotIssued { identity: Identity, bundle: PathBuf },
    /// An existing certificate fails the checks its users will make.
    #[error(transparent)]
    Existing(#[from] TlsError),
    /// A certificate file holds no PEM certificate block.
    #[error("{} holds no PEM certificate", path.display())]
    NoCertificate { path: PathBuf },
    /// A certificate file's PEM block is not a valid X.509 certificate.
    #[error("{} holds no valid certificate: {source}", path.display())]
    BadCertificate { path: PathBuf, source: X509Error },
    /// A key file holds no key rcgen can use.
    #[error("{} holds no usable private key: {source}", path.display())]
    BadKey { path: PathBuf, source: rcgen::Error },
    /// A key file does not belong to the certificate next to it.
    #[error("{} is not the private key of {}", key.display(), cert.display())]
    KeyMismatch { cert: PathBuf, key: PathBuf },
    /// `ca.pem` is a certificate, but not one that may issue others.
    #[error("{} cannot be used as the CA: it is not a CA certificate", path.display())]
    NotCa { path: PathBuf },
    /// rcgen cannot read `ca.pem` as an issuer.
    #[error("{} cannot be used as the CA: {source}", path.display())]
    BadCa { path: PathBuf, source: rcgen::Error },
    /// rcgen failed to build a certificate.
    #[error("cannot generate the certificate of {subject}: {source}")]
    Generate { subject: String, source: rcgen::Error },
}

/// A new self-signed CA, kept as the issuer of the certificates created in the same run.
fn new_authority() -> Result<CertifiedIssuer<'static, KeyPair>, PkiError> {
    let generate = |source| PkiError::Generate { subject: CA_COMMON_NAME.to_string(), source };
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, CA_COMMON_NAME);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    set_validity(&mut params, CA_VALIDITY);
    let key = KeyPair::generate().map_err(generate)?;
    CertifiedIssuer::self_signed(params, key).map_err(generate)
}

/// The CA of an earlier run, read back from `ca.pem` and `ca.key`.
fn load_authority(cert_path: &Path, key_path: &Path) -> Result<Issuer<'static, KeyPair>, PkiError> {
    let cert_pem = read_string(cert_path)?;
    let key = read_key(key_path)?;
    let (public_key, is_ca) = inspect_certificate(cert_path, &cert_pem, |cert| (public_key(cert), cert.is_ca()))?;
    // rcgen would sign with any certificate; a leaf mistaken for the CA must not issue.
    if !is_ca {
        return Err(PkiError::NotCa { path: cert_path.to_path_buf() });
    }
    if public_key != key.subject_public_key_info() {
        return Err(PkiError::KeyMismatch { cert: cert_path.to_path_buf(), key: key_path.to_path_buf() });
    }
    // Subject and key identifier come from ca.pem itself, so new certificates chain to the CA clients trust.
    Issuer::from_ca_cert_pem(&cert_pem, key).map_err(|source| PkiError::BadCa { path: cert_path.to_path_buf(), source })
}

fn leaf_params(identity: &Identity) -> Result<CertificateParams, rcgen::Error> {
    let sans = match identity.role {
        Role::Coordinator => {
            let mut sans: Vec<String> = [SERVER_NAME, "localhost", "127.0.0.1", "::1"].map(String::from).into();
            if is_dns_name(&identity.name) && !sans.contains(&identity.name) {
                sans.push(identity.name.clone());
            }
            sans
        }
        Role::Agent | Role::Admin => Vec::new(),
    };
    let mut params = CertificateParams::new(sans)?;
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, identity.common_name());
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = match identity.role {
        // Coordinators also dial each other for Raft, so they are clients too.
        Role::Coordinator => vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth],
        Role::Agent | Role::Admin => vec![ExtendedKeyUsagePurpose::ClientAuth],
    };
    params.use_authority_key_identifier_extension = true;
    set_validity(&mut params, LEAF_VALIDITY);
    Ok(params)
}

fn set_validity(params: &mut CertificateParams, validity: Duration) {
    let now = SystemTime::now();
    params.not_before = (now - BACKDATE).into();
    params.not_after = (now + validity).into();
}

/// Whether a coordinator name can also be a DNS SAN: RFC 1123 labels, not all digits (`1` is a node id, not a host).
fn is_dns_name(name: &str) -> bool {
    let labels_ok = name.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    });
    labels_ok && name.chars().any(|c| c.is_ascii_lowercase())
}

fn check_key_matches(cert_path: &Path, key_path: &Path) -> Result<(), PkiError> {
    let cert_pem = read_string(cert_path)?;
    let key = read_key(key_path)?;
    if inspect_certificate(cert_path, &cert_pem, public_key)? != key.subject_public_key_info() {
        return Err(PkiError::KeyMismatch { cert: cert_path.to_path_buf(), key: key_path.to_path_buf() });
    }
    Ok(())
}

/// Applies `f` to the first certificate in `pem`.
fn inspect_certificate<T>(path: &Path, pem: &str, f: impl FnOnce(&X509Certificate<'_>) -> T) -> Result<T, PkiError> {
    let block = Pem::iter_from_buffer(pem.as_bytes())
        .map_while(Result::ok)
        .find(|block| block.label == "CERTIFICATE")
        .ok_or_else(|| PkiError::NoCertificate { path: path.to_path_buf() })?;
    let cert = block
        .parse_x509()
        .map_err(|error| PkiError::BadCertificate { path: path.to_path_buf(), source: error.into() })?;
    Ok(f(&cert))
}

/// The DER SubjectPublicKeyInfo of `cert`, to compare with a key pair's.
fn public_key(cert: &X509Certificate<'_>) -> Vec<u8> {
    cert.public_key().raw.to_vec()
}

fn read_key(path: &Path) -> Result<KeyPair, PkiError> {
    KeyPair::from_pem(&read_string(path)?).map_err(|source| PkiError::BadKey { path: path.to_path_buf(), source })
}

fn read_string(path: &Path) -> Result<String, PkiError> {
    fs::read_to_string(path).map_err(|source| PkiError::Read { path: path.to_path_buf(), source })
}

fn exists(path: &Path) -> Result<bool, PkiError> {
    path.try_exists().map_err(|source| PkiError::Read { path: path.to_path_buf(), source })
}

fn create_dir(dir: &Path) -> Result<(), PkiError> {
    // 0700: the directory holds the CA key.
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| PkiError::CreateDir { path: dir.to_path_buf(), source })
}

/// Writes the key, then the certificate, so that a certificate on disk always has its key.
fn write_pair(cert_path: &Path, cert_pem: &str, key_path: &Path, key_pem: &str) -> Result<(), PkiError> {
    write_new(key_path, key_pem, 0o600)?;
    if let Err(error) = write_new(cert_path, cert_pem, 0o644) {
        // Leaves no lone key behind that the next run would refuse as incomplete.
        let _ = fs::remove_file(key_path);
        return Err(error);
    }
    Ok(())
}

/// Replaces `path` by renaming a fully written and synced file over it.
fn replace(path: &Path, contents: &str, mode: u32) -> Result<(), PkiError> {
    let name = path.file_name().map(|name| name.to_string_lossy().into_owned()).unwrap_or_default();
    let temporary = path.with_file_name(format!(".{name}.new"));
    let _ = fs::remove_file(&temporary);
    write_new(&temporary, contents, mode)?;
    fs::rename(&temporary, path).map_err(|source| {
        let _ = fs::remove_file(&temporary);
        PkiError::Write { path: path.to_path_buf(), source }
    })
}

fn write_new(path: &Path, contents: &str, mode: u32) -> Result<(), PkiError> {
    let write_error = |source| PkiError::Write { path: path.to_path_buf(), source };
    // create_new: a file that appeared since the check is never overwritten.
    let mut file = fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(path).map_err(write_error)?;
    file.write_all(contents.as_bytes()).and_then(|()| file.sync_all()).map_err(|source| {
        let _ = fs::remove_file(path);
        write_error(source)
    })
}

fn generate_error(identity: &Identity, source: rcgen::Error) -> PkiError {
    PkiError::Generate { subject: identity.common_name(), source }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use std::sync::Arc;

    use lbfleet_proto::credentials::Credentials;
    use lbfleet_proto::credentials::Gate;
    use lbfleet_proto::credentials::Reloaded;
    use lbfleet_proto::tls_io;
    use x509_parser::extensions::GeneralName;
    use x509_parser::pem::parse_x509_pem;

    use super::*;

    fn id(role: Role, name: &str) -> Identity {
        Identity::new(role, name).unwrap()
    }

    fn fleet() -> Vec<Identity> {
        vec![
            id(Role::Coordinator, "1"),
            id(Role::Coordinator, "node-b"),
            id(Role::Agent, "lb-a"),
            id(Role::Admin, "ops"),
        ]
    }

    /// Every file under the directory with its contents, to compare runs.
    fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
        let mut files = Vec::new();
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                files.extend(snapshot(&path));
            } else {
                let contents = fs::read(&path).unwrap();
                files.push((path, contents));
            }
        }
        files.sort();
        files
    }

    fn cert_der(path: &Path) -> Vec<u8> {
        parse_x509_pem(&fs::read(path).unwrap()).unwrap().1.contents
    }

    /// DNS and IP SANs of a certificate, as text.
    fn sans(path: &Path) -> Vec<String> {
        let der = cert_der(path);
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        let Some(san) = cert.subject_alternative_name().unwrap() else {
            return Vec::new();
        };
        san.value
            .general_names
            .iter()
            .map(|name| match name {
                GeneralName::DNSName(dns) => dns.to_string(),
                GeneralName::IPAddress(ip) => format!("ip:{ip:?}"),
                other => format!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn init_twice_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let tls_dir = dir.path().join("tls");
        let first = init(&tls_dir, &fleet()).unwrap();
        assert!(first.iter().all(|issued| issued.created));
        assert_eq!(first.len(), 4);
        let before = snapshot(&tls_dir);
        // ca.pem and ca.key, then ca.pem, a certificate and a key in each of the 4 bundles.
        assert_eq!(before.len(), 2 + 3 * 4);

        let second = init(&tls_dir, &fleet()).unwrap();
        assert!(second.iter().all(|issued| !issued.created));
        assert_eq!(
            second.iter().map(|issued| &issued.cert).collect::<Vec<_>>(),
            first.iter().map(|issued| &issued.cert).collect::<Vec<_>>()
        );
        assert_eq!(snapshot(&tls_dir), before);
    }

    #[test]
    fn identities_added_later_share_the_ca() {
        let dir = tempfile::tempdir().unwrap();
        init(dir.path(), &fleet()).unwrap();
        let ca_before = fs::read(dir.path().join("ca.pem")).unwrap();

        let mut more = fleet();
        more.push(id(Role::Agent, "lb-b"));
        more.push(id(Role::Agent, "lb-b"));
        let issued = init(dir.path(), &more).unwrap();
        let created: Vec<_> = issued.iter().filter(|i| i.created).map(|i| i.identity.clone()).collect();
        assert_eq!(created, vec![id(Role::Agent, "lb-b")]);
        assert_eq!(issued.len(), 5, "duplicates are reported once");
        assert_eq!(fs::read(dir.path().join("ca.pem")).unwrap(), ca_before);
        TlsDir::new(dir.path()).check(&id(Role::Agent, "lb-b")).unwrap();
    }

    #[test]
    fn issued_certificates_name_their_identity() {
        let dir = tempfile::tempdir().unwrap();
        let tls = TlsDir::new(dir.path());
        for issued in init(dir.path(), &fleet()).unwrap() {
            assert_eq!(issued.cert, tls.cert_path(&issued.identity));
            assert_eq!(Identity::from_cert_der(&cert_der(&issued.cert)).unwrap(), issued.identity);
            tls.check(&issued.identity).unwrap();
            // A bundle holds the CA certificate and its own pair, nothing else.
            let mut bundle: Vec<String> = fs::read_dir(&issued.bundle)
                .unwrap()
                .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            bundle.sort();
            let stem = issued.identity.file_stem();
            let mut expected = vec![format!("{stem}.key"), format!("{stem}.pem"), "ca.pem".to_string()];
            expected.sort();
            assert_eq!(bundle, expected);
            TlsDir::new(&issued.bundle).check(&issued.identity).unwrap();
            let key_mode = fs::metadata(tls.key_path(&issued.identity)).unwrap().permissions().mode();
            assert_eq!(key_mode & 0o777, 0o600);
        }
        assert_eq!(fs::metadata(tls.ca_key_path()).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(tls.admin_identity(None).unwrap(), id(Role::Admin, "ops"));
    }

    #[test]
    fn coordinator_certificates_carry_the_server_name() {
        let dir = tempfile::tempdir().unwrap();
        let tls = TlsDir::new(dir.path());
        init(dir.path(), &fleet()).unwrap();
        let loopback = ["ip:[127, 0, 0, 1]", "ip:[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]"];
        let mut expected: Vec<String> = [SERVER_NAME, "localhost"].map(String::from).into();
        expected.extend(loopback.map(String::from));
        assert_eq!(sans(&tls.cert_path(&id(Role::Coordinator, "1"))), expected);
        expected.push("node-b".to_string());
        assert_eq!(sans(&tls.cert_path(&id(Role::Coordinator, "node-b"))), expected);
        assert!(sans(&tls.cert_path(&id(Role::Agent, "lb-a"))).is_empty());
        assert!(sans(&tls.cert_path(&id(Role::Admin, "ops"))).is_empty());
    }

    #[test]
    fn dns_names_for_coordinators() {
        for name in ["node-b", "c1.example", "a"] {
            assert!(is_dns_name(name), "{name}");
        }
        for name in ["1", "10.0.0.1", "-a", "a-", "a_b", "a..b"] {
            assert!(!is_dns_name(name), "{name}");
        }
    }

    #[test]
    fn half_pairs_are_refused_without_writing() {
        let dir = tempfile::tempdir().unwrap();
        let tls = TlsDir::new(dir.path());
        init(dir.path(), &fleet()).unwrap();
        fs::remove_file(tls.key_path(&id(Role::Agent, "lb-a"))).unwrap();
        let before = snapshot(dir.path());
        let mut more = fleet();
        more.insert(0, id(Role::Agent, "lb-z"));
        let error = init(dir.path(), &more).unwrap_err();
        assert!(matches!(error, PkiError::Incomplete { .. }), "{error}");
        assert_eq!(snapshot(dir.path()), before);
    }

    #[test]
    fn certificates_without_their_ca_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        init(dir.path(), &fleet()).unwrap();
        fs::remove_file(dir.path().join("ca.pem")).unwrap();
        fs::remove_file(dir.path().join("ca.key")).unwrap();
        let error = init(dir.path(), &fleet()).unwrap_err();
        assert!(matches!(error, PkiError::NoCa { .. }), "{error}");
        assert!(!dir.path().join("ca.pem").exists());
    }

    #[test]
    fn issuing_needs_the_ca_key_checking_does_not() {
        let dir = tempfile::tempdir().unwrap();
        init(dir.path(), &fleet()).unwrap();
        fs::remove_file(dir.path().join("ca.key")).unwrap();
        init(dir.path(), &fleet()).unwrap();
        let error = init(dir.path(), &[id(Role::Agent, "lb-b")]).unwrap_err();
        assert!(matches!(error, PkiError::CaKeyMissing { .. }), "{error}");
    }

    #[test]
    fn swapped_keys_and_misnamed_certificates_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let tls = TlsDir::new(dir.path());
        init(dir.path(), &fleet()).unwrap();
        let (a, b) = (id(Role::Agent, "lb-a"), id(Role::Admin, "ops"));
        fs::copy(tls.key_path(&b), tls.key_path(&a)).unwrap();
        let error = init(dir.path(), &fleet()).unwrap_err();
        assert!(matches!(error, PkiError::KeyMismatch { .. }), "{error}");

        fs::copy(tls.cert_path(&b), tls.cert_path(&a)).unwrap();
        let error = init(dir.path(), &fleet()).unwrap_err();
        assert!(matches!(error, PkiError::Existing(TlsError::WrongIdentity { .. })), "{error}");
    }

    #[test]
    fn init_without_identities_creates_the_ca() {
        let dir = tempfile::tempdir().unwrap();
        assert!(init(dir.path(), &[]).unwrap().is_empty());
        assert!(dir.path().join("ca.pem").exists() && dir.path().join("ca.key").exists());
    }

    /// A one-method gRPC service answering with the caller's identity, for admins and coordinators only.
    mod whoami {
        use std::convert::Infallible;
        use std::future::Future;
        use std::pin::Pin;
        use std::task::Context;
        use std::task::Poll;

        use lbfleet_proto::identity::authorize;
        use lbfleet_proto::identity::peer_certified;
        use lbfleet_proto::Role;
        use tonic::body::Body;
        use tonic::codegen::http;
        use tonic::codegen::Service;
        use tonic::server::NamedService;
        use tonic::Request;
        use tonic::Response;
        use tonic::Status;
        use tonic_prost::ProstCodec;

        pub const PATH: &str = "/test.WhoAmI/Get";

        #[derive(Clone)]
        pub struct WhoAmI;

        impl NamedService for WhoAmI {
            const NAME: &'static str = "test.WhoAmI";
        }

        impl Service<Request<()>> for WhoAmI {
            type Response = Response<String>;
            type Error = Status;
            type Future = std::future::Ready<Result<Response<String>, Status>>;

            fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Status>> {
                Poll::Ready(Ok(()))
            }

            fn call(&mut self, request: Request<()>) -> Self::Future {
                let answer = authorize(&request, &[Role::Admin, Role::Coordinator])
                    .and_then(|_| peer_certified(&request))
                    .map(|certified| Response::new(format!("{} {}", certified.identity, certified.serial)));
                std::future::ready(answer)
            }
        }

        impl Service<http::Request<Body>> for WhoAmI {
            type Response = http::Response<Body>;
            type Error = Infallible;
            type Future = Pin<Box<dyn Future<Output = Result<http::Response<Body>, Infallible>> + Send>>;

            fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
                Poll::Ready(Ok(()))
            }

            fn call(&mut self, request: http::Request<Body>) -> Self::Future {
                Box::pin(async move {
                    let mut grpc = tonic::server::Grpc::new(ProstCodec::<String, ()>::default());
                    Ok(grpc.unary(WhoAmI, request).await)
                })
            }
        }
    }

    /// A WhoAmI server on loopback with `node-b`'s credentials from `dir`, refusing what `gate` refuses.
    async fn whoami_server(dir: &Path, gate: Gate) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
        let credentials = Credentials::server(&TlsDir::new(dir), &id(Role::Coordinator, "node-b"), gate).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let incoming = tls_io::accept(listener, credentials.clone(), Duration::from_secs(3));
        let server = tonic::transport::Server::builder().add_service(whoami::WhoAmI).serve_with_incoming(incoming);
        let watcher = credentials.watch();
        let task = tokio::spawn(async move {
            let _ = server.await;
            watcher.abort();
        });
        (addr, task)
    }

    /// Calls WhoAmI at `addr` with `credentials` on a new connection: "<identity> <serial>".
    async fn whoami(addr: std::net::SocketAddr, credentials: &Arc<Credentials>) -> Result<String, tonic::Status> {
        use tonic::codegen::http::uri::PathAndQuery;
        use tonic_prost::ProstCodec;

        // Dialled by IP: the certificate is checked against SERVER_NAME, not the address.
        let channel = lbfleet_proto::transport::channel(&addr.to_string(), credentials).unwrap();
        let mut grpc = tonic::client::Grpc::new(channel);
        grpc.ready().await.map_err(|error| tonic::Status::unavailable(error.to_string()))?;
        let path = PathAndQuery::from_static(whoami::PATH);
        grpc.unary(tonic::Request::new(()), path, ProstCodec::<(), String>::default()).await.map(|r| r.into_inner())
    }

    /// The serial of the certificate the server at `addr` presents in a new handshake.
    async fn server_serial_seen(addr: std::net::SocketAddr, client: &Credentials) -> Option<String> {
        let tcp = tokio::net::TcpStream::connect(addr).await.ok()?;
        let name = rustls::pki_types::ServerName::try_from(SERVER_NAME).ok()?;
        let stream = tokio_rustls::TlsConnector::from(client.client_config()).connect(name, tcp).await.ok()?;
        let leaf = stream.get_ref().1.peer_certificates()?.first()?.clone();
        Some(lbfleet_proto::identity::Certified::from_der(&leaf).ok()?.serial)
    }

    fn open_gate() -> Gate {
        Arc::new(|_| Ok(()))
    }

    #[tokio::test]
    async fn issued_certificates_authenticate_over_mtls() {
        let dir = tempfile::tempdir().unwrap();
        let tls = TlsDir::new(dir.path());
        let issued = init(dir.path(), &fleet()).unwrap();
        let serial_of = |identity: &Identity| issued.iter().find(|i| &i.identity == identity).unwrap().serial.clone();
        let (addr, server) = whoami_server(dir.path(), open_gate()).await;

        let as_identity = |identity: Identity| {
            let credentials = Credentials::client(&tls, &identity).unwrap();
            async move { whoami(addr, &credentials).await }
        };
        let ops = id(Role::Admin, "ops");
        assert_eq!(as_identity(ops.clone()).await.unwrap(), format!("admin:ops {}", serial_of(&ops)));
        let node = id(Role::Coordinator, "1");
        assert_eq!(as_identity(node.clone()).await.unwrap(), format!("coordinator:1 {}", serial_of(&node)));
        let denied = as_identity(id(Role::Agent, "lb-a")).await.unwrap_err();
        assert_eq!(denied.code(), tonic::Code::PermissionDenied);
        assert!(denied.message().contains("agent:lb-a"), "{}", denied.message());

        // Issued later by the same CA, while the server keeps running.
        init(dir.path(), &[id(Role::Admin, "late")]).unwrap();
        assert!(as_identity(id(Role::Admin, "late")).await.unwrap().starts_with("admin:late "));

        // A client certificate from another CA is refused at the handshake.
        let other = tempfile::tempdir().unwrap();
        init(other.path(), &[id(Role::Admin, "ops")]).unwrap();
        let stranger = Credentials::client(&TlsDir::new(other.path()), &ops).unwrap();
        assert!(whoami(addr, &stranger).await.is_err(), "a certificate of another CA got through");
        server.abort();
    }

    #[tokio::test]
    async fn renewed_certificates_are_used_without_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let tls = TlsDir::new(dir.path());
        init(dir.path(), &fleet()).unwrap();
        let (addr, server) = whoami_server(dir.path(), open_gate()).await;
        let ops = id(Role::Admin, "ops");
        let client = Credentials::client(&tls, &ops).unwrap();
        let before = whoami(addr, &client).await.unwrap();

        let renewed = renew(dir.path(), &[ops.clone(), id(Role::Coordinator, "node-b")]).unwrap();
        assert!(renewed.iter().all(|issued| issued.created));
        assert_eq!(client.reload().unwrap(), Reloaded::Renewed { serial: renewed[0].serial.clone() });
        assert_eq!(client.reload().unwrap(), Reloaded::Unchanged);
        let after = whoami(addr, &client).await.unwrap();
        assert_ne!(before, after);
        assert_eq!(after, format!("admin:ops {}", renewed[0].serial));

        // The server's watcher picks up its own renewed certificate: the next handshake shows it.
        let server_serial = &renewed[1].serial;
        let mut seen = String::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while &seen != server_serial && std::time::Instant::now() < deadline {
            seen = server_serial_seen(addr, &client).await.unwrap_or_default();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(&seen, server_serial, "the server kept its old certificate");

        // A key that does not belong to the certificate is refused and the current pair stays.
        fs::copy(tls.key_path(&id(Role::Agent, "lb-a")), tls.key_path(&ops)).unwrap();
        assert!(matches!(client.reload(), Err(TlsError::Refused { .. })));
        assert_eq!(whoami(addr, &client).await.unwrap(), after);
        server.abort();
    }

    #[tokio::test]
    async fn the_gate_refuses_certificates_at_the_handshake() {
        let dir = tempfile::tempdir().unwrap();
        let tls = TlsDir::new(dir.path());
        let issued = init(dir.path(), &fleet()).unwrap();
        let refused_serial = issued.iter().find(|i| i.identity == id(Role::Admin, "ops")).unwrap().serial.clone();
        let gate: Gate = Arc::new(move |certified| match certified.serial == refused_serial {
            true => Err("revoked".to_string()),
            false => Ok(()),
        });
        let (addr, server) = whoami_server(dir.path(), gate).await;
        let refused = Credentials::client(&tls, &id(Role::Admin, "ops")).unwrap();
        assert!(whoami(addr, &refused).await.is_err(), "a refused certificate got through");
        let admitted = Credentials::client(&tls, &id(Role::Coordinator, "1")).unwrap();
        assert!(whoami(addr, &admitted).await.unwrap().starts_with("coordinator:1 "));
        server.abort();
    }
}
