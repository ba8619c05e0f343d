//! Who is calling: the role and name a certificate carries as its subject Common Name
//! `<role>:<name>` (`coordinator:1`, `agent:lb-a`, `admin:ops`), and the checks every RPC makes.

use std::fmt;
use std::str::FromStr;

use thiserror::Error;
use tonic::Request;
use tonic::Status;
use x509_parser::certificate::X509Certificate;
use x509_parser::error::X509Error;
use x509_parser::prelude::FromDer;

/// The longest name an identity may have, so that it also fits a DNS label.
pub const NAME_MAX_LEN: usize = 63;

/// What a certificate holder may do: each RPC allows some of these.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// A coordinator node: serves the API and talks Raft to its peers.
    Coordinator,
    /// The agent of one load-balancer host.
    Agent,
    /// An operator using the `lbfleet` CLI.
    Admin,
}

impl Role {
    /// Every role, in the order they are listed to users.
    pub const ALL: [Role; 3] = [Role::Coordinator, Role::Agent, Role::Admin];

    /// The role as written in common names and file names.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Coordinator => "coordinator",
            Role::Agent => "agent",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = IdentityError;

    fn from_str(s: &str) -> Result<Role, IdentityError> {
        Role::ALL
            .into_iter()
            .find(|role| role.as_str() == s)
            .ok_or_else(|| IdentityError::UnknownRole { role: s.to_string() })
    }
}

/// A validated role and name, as carried by a certificate.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Identity {
    /// What the holder may do.
    pub role: Role,
    /// The coordinator's node id, the agent's host id or the operator's name.
    pub name: String,
}

impl Identity {
    /// An identity, once `name` is known to be 1-63 of `[a-z0-9._-]` starting with a letter or digit.
    pub fn new(role: Role, name: &str) -> Result<Identity, IdentityError> {
        validate_name(name)?;
        Ok(Identity { role, name: name.to_string() })
    }

    /// The subject Common Name of this identity's certificate, e.g. `agent:lb-a`.
    pub fn common_name(&self) -> String {
        format!("{}:{}", self.role, self.name)
    }

    /// The file name, without extension, of this identity's certificate and key, e.g. `agent-lb-a`.
    pub fn file_stem(&self) -> String {
        format!("{}-{}", self.role, self.name)
    }

    /// Reads a Common Name of the form `<role>:<name>`.
    pub fn parse(common_name: &str) -> Result<Identity, IdentityError> {
        let malformed = || IdentityError::MalformedCommonName { common_name: common_name.to_string() };
        let (role, name) = common_name.split_once(':').ok_or_else(malformed)?;
        let role = role.parse::<Role>().map_err(|_| malformed())?;
        Identity::new(role, name)
    }

    /// The identity named by the subject Common Name of a DER certificate.
    pub fn from_cert_der(der: &[u8]) -> Result<Identity, IdentityError> {
        Certified::from_der(der).map(|certified| certified.identity)
    }

    fn from_cert(cert: &X509Certificate<'_>) -> Result<Identity, IdentityError> {
        let mut names = cert.subject().iter_common_name();
        let first = names.next().ok_or(IdentityError::NoCommonName)?;
        // Two CNs would let a certificate be read as two identities.
        if names.next().is_some() {
            return Err(IdentityError::SeveralCommonNames);
        }
        let common_name = first.as_str().map_err(|_| IdentityError::CommonNameNotText)?;
        Identity::parse(common_name)
    }
}

/// A certificate's identity and serial number: what revocations are checked against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Certified {
    /// Who the certificate names.
    pub identity: Identity,
    /// The serial number as lowercase hex without separators or leading zero bytes.
    pub serial: String,
}

impl Certified {
    /// Reads the identity and serial of a DER certificate.
    pub fn from_der(der: &[u8]) -> Result<Certified, IdentityError> {
        let (_, cert) =
            X509Certificate::from_der(der).map_err(|error| IdentityError::BadCertificate { source: error.into() })?;
        Ok(Certified { identity: Identity::from_cert(&cert)?, serial: serial_hex(cert.raw_serial()) })
    }
}

/// A serial number as `lbfleet` prints and accepts it: lowercase hex, leading zero bytes dropped
/// (DER adds one to keep a serial positive, and tools differ on showing it).
pub fn serial_hex(raw: &[u8]) -> String {
    // An all-zero serial keeps its last byte.
    let start = raw.iter().position(|byte| *byte != 0).unwrap_or(raw.len().saturating_sub(1));
    raw[start..].iter().map(|byte| format!("{byte:02x}")).collect()
}

/// Reads a serial as an operator may type it (`0A:1b:...`, `0x0a1b...`, any case) into [`serial_hex`]'s form.
pub fn normalize_serial(typed: &str) -> Option<String> {
    let digits: String = typed.trim().trim_start_matches("0x").chars().filter(|c| *c != ':').collect();
    if digits.is_empty() || digits.len() > 40 || !digits.chars().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    let padded = if digits.len() % 2 == 1 { format!("0{digits}") } else { digits };
    let bytes: Vec<u8> =
        (0..padded.len()).step_by(2).map(|i| u8::from_str_radix(&padded[i..i + 2], 16).expect("hex digits")).collect();
    Some(serial_hex(&bytes))
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.role, self.name)
    }
}

/// Why a name, common name or certificate does not give an identity.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum IdentityError {
    /// The name breaks the naming rules.
    #[error("invalid name {name:?}: {reason}")]
    InvalidName { name: String, reason: String },
    /// The role is not one of the known ones.
    #[error("unknown role {role:?}: expected coordinator, agent or admin")]
    UnknownRole { role: String },
    /// The common name is not `<role>:<name>`.
    #[error("certificate common name {common_name:?} is not of the form <role>:<name> (e.g. agent:lb-a)")]
    MalformedCommonName { common_name: String },
    /// The bytes are not an X.509 certificate.
    #[error("not a valid X.509 certificate: {source}")]
    BadCertificate {
        /// What the parser found wrong.
        source: X509Error,
    },
    /// The subject Common Name is encoded as something other than a string.
    #[error("the certificate subject's common name is not a string")]
    CommonNameNotText,
    /// The certificate subject has no Common Name.
    #[error("the certificate subject has no common name")]
    NoCommonName,
    /// The certificate subject has more than one Common Name.
    #[error("the certificate subject has several common names")]
    SeveralCommonNames,
}

fn validate_name(name: &str) -> Result<(), IdentityError> {
    let invalid = |reason: String| IdentityError::InvalidName { name: name.to_string(), reason };
    if name.is_empty() || name.len() > NAME_MAX_LEN {
        return Err(invalid(format!("must be 1 to {NAME_MAX_LEN} characters")));
    }
    if let Some(bad) =
        name.chars().find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.')))
    {
        return Err(invalid(format!("character {bad:?} is not allowed (use a-z, 0-9, '-', '_', '.')")));
    }
    // Keeps names like `..` or `-x` out of file names and command lines.
    if !name.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return Err(invalid("must start with a letter or digit".to_string()));
    }
    Ok(())
}

/// The authenticated caller of a gRPC request, from its verified client certificate.
// Status is what every tonic handler returns; boxing it here would only move the cost to callers.
#[allow(clippy::result_large_err)]
pub fn peer_identity<T>(request: &Request<T>) -> Result<Identity, Status> {
    peer_certified(request).map(|certified| certified.identity)
}

/// The identity and serial of the caller's verified client certificate.
#[allow(clippy::result_large_err)]
pub fn peer_certified<T>(request: &Request<T>) -> Result<Certified, Status> {
    // The TLS layer has already verified the chain against the fleet CA; only the name is read here.
    let certs = request.peer_certs().ok_or_else(|| {
        Status::unauthenticated("no client certificate: connect over mTLS with a certificate of the fleet CA")
    })?;
    let leaf = certs.first().ok_or_else(|| Status::unauthenticated("the client sent an empty certificate chain"))?;
    Certified::from_der(leaf).map_err(|error| Status::unauthenticated(format!("client certificate: {error}")))
}

/// Checks the caller has one of `allowed` roles; Status::permission_denied naming the identity and the roles allowed.
#[allow(clippy::result_large_err)]
pub fn authorize<T>(request: &Request<T>, allowed: &[Role]) -> Result<Identity, Status> {
    let identity = peer_identity(request)?;
    if allowed.contains(&identity.role) {
        return Ok(identity);
    }
    Err(Status::permission_denied(denial(&identity, allowed)))
}

fn denial(identity: &Identity, allowed: &[Role]) -> String {
    if allowed.is_empty() {
        return format!("{identity} is not allowed to call this: no role is");
    }
    let roles: Vec<&str> = allowed.iter().map(|role| role.as_str()).collect();
    format!("{identity} is not allowed to call this: it needs the role {}", roles.join(" or "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_round_trips() {
        for role in Role::ALL {
            assert_eq!(role.to_string().parse::<Role>(), Ok(role));
        }
        assert_eq!("root".parse::<Role>(), Err(IdentityError::UnknownRole { role: "root".to_string() }));
    }

    #[test]
    fn names_and_stems() {
        let id = Identity::new(Role::Agent, "lb-a").unwrap();
        assert_eq!(id.common_name(), "agent:lb-a");
        assert_eq!(id.to_string(), "agent:lb-a");
        assert_eq!(id.file_stem(), "agent-lb-a");
        assert_eq!(Identity::parse("agent:lb-a"), Ok(id));
        assert_eq!(Identity::parse("coordinator:1").unwrap().role, Role::Coordinator);
        assert_eq!(Identity::parse("admin:ops.team_1").unwrap().name, "ops.team_1");
    }

    #[test]
    fn bad_names_are_rejected() {
        let long = "a".repeat(NAME_MAX_LEN + 1);
        for name in ["", "LB", "lb a", "lb:a", "lb/a", "..", "-a", "é", long.as_str()] {
            assert!(
                matches!(Identity::new(Role::Agent, name), Err(IdentityError::InvalidName { .. })),
                "{name:?} accepted"
            );
        }
        assert!(Identity::new(Role::Agent, &"a".repeat(NAME_MAX_LEN)).is_ok());
    }

    #[test]
    fn serials_are_normalized() {
        assert_eq!(serial_hex(&[0x00, 0x8a, 0x01]), "8a01");
        assert_eq!(serial_hex(&[0x00]), "00");
        assert_eq!(normalize_serial("00:8A:01").as_deref(), Some("8a01"));
        assert_eq!(normalize_serial("0x8a01").as_deref(), Some("8a01"));
        assert_eq!(normalize_serial("a01").as_deref(), Some("0a01"));
        for bad in ["", "xyz", "8a 01", &"f".repeat(41)] {
            assert_eq!(normalize_serial(bad), None, "{bad:?} accepted");
        }
    }

    #[test]
    fn bad_common_names_are_rejected() {
        for cn in ["agent", "root:x", ":x", "agent lb-a"] {
            assert!(matches!(Identity::parse(cn), Err(IdentityError::MalformedCommonName { .. })), "{cn:?} accepted");
        }
        assert!(matches!(Identity::parse("agent:"), Err(IdentityError::InvalidName { .. })));
        assert!(matches!(Identity::parse("agent:a:b"), Err(IdentityError::InvalidName { .. })));
    }

    fn cert_with_names(common_names: &[&str]) -> Vec<u8> {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        for cn in common_names {
            params.distinguished_name.push(rcgen::DnType::CommonName, *cn);
        }
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn identity_from_certificate() {
        assert_eq!(
            Identity::from_cert_der(&cert_with_names(&["admin:ops"])),
            Ok(Identity::new(Role::Admin, "ops").unwrap())
        );
        assert_eq!(Identity::from_cert_der(&cert_with_names(&[])), Err(IdentityError::NoCommonName));
        assert!(matches!(
            Identity::from_cert_der(&cert_with_names(&["ops"])),
            Err(IdentityError::MalformedCommonName { .. })
        ));
        assert!(matches!(Identity::from_cert_der(b"not a certificate"), Err(IdentityError::BadCertificate { .. })));
    }

    #[test]
    fn request_without_certificate_is_unauthenticated() {
        let request = Request::new(());
        let status = peer_identity(&request).unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
        assert_eq!(authorize(&request, &Role::ALL).unwrap_err().code(), tonic::Code::Unauthenticated);
    }

    #[test]
    fn denial_names_identity_and_roles() {
        let agent = Identity::new(Role::Agent, "lb-a").unwrap();
        assert_eq!(
            denial(&agent, &[Role::Coordinator, Role::Admin]),
            "agent:lb-a is not allowed to call this: it needs the role coordinator or admin"
        );
        assert_eq!(denial(&agent, &[]), "agent:lb-a is not allowed to call this: no role is");
    }
}
