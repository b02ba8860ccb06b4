//! Why a server's certificate was refused, said so that a person can act on it.

use std::fmt;
use std::sync::Arc;

use rustls::{CertificateError, OtherError};

use super::certificate::{CertificateSummary, time_text};

/// A server certificate the verifier refused: what the server presented, what was trusted, and
/// what was wrong. Its `Display` is one sentence ending in what to change.
///
/// It travels through rustls as `CertificateError::Other` (rustls's own errors would print as
/// `Other(OtherError(...))`); [`RefusedCertificate::in_rustls_error`] gets it back.
#[derive(Debug, Clone)]
pub struct RefusedCertificate {
    /// The server's certificate, or why it could not be read.
    pub presented: Result<CertificateSummary, String>,
    /// Whether it is one of the user's certificates, byte for byte.
    pub matches_user_certificate: bool,
    /// What was wrong with it.
    pub problem: Problem,
    /// The user's certificates (trusted as CAs and as servers' own).
    pub user_certificates: Vec<CertificateSummary>,
    /// Where the user gives certificates: `source.ca_cert`.
    pub user_setting: String,
    /// The time of the check, seconds since the Unix epoch.
    pub now: i64,
}

/// What was wrong with a server's certificate.
#[derive(Debug, Clone)]
pub enum Problem {
    /// Not one of the user's certificates, and not signed by a trusted CA.
    UnknownIssuer {
        /// Why a trusted certificate named as its issuer would not do, when there was one.
        detail: Option<&'static str>,
    },
    /// A CA certificate (basic constraints CA:TRUE) as the server's own, and not one of the
    /// user's certificates: webpki refuses those, so only pinning makes them trusted.
    CaAsServerCertificate,
    /// Not valid for the name the client connected to.
    WrongName {
        /// The host name or IP address connected to.
        expected: String,
    },
    /// Its validity ended before now.
    Expired,
    /// Its validity starts after now.
    NotYetValid,
    /// Anything else webpki refused: a critical extension it does not know, a malformed
    /// certificate, ...
    Other(rustls::Error),
}

impl RefusedCertificate {
    /// The refusal inside an error from a rustls connection, if that is what it is.
    pub fn in_rustls_error(err: &rustls::Error) -> Option<&RefusedCertificate> {
        match err {
            rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(inner))) => {
                inner.downcast_ref::<RefusedCertificate>()
            }
            _ => None,
        }
    }

    /// The user's certificates as a list: `CN=other, self-signed; CN=Example CA`.
    fn user_certificates_text(&self) -> String {
        self.user_certificates
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// What was wrong, without what was presented (for a certificate that cannot be read).
    fn problem_text(&self) -> String {
        match &self.problem {
            Problem::UnknownIssuer { .. } => "not signed by a trusted CA".to_owned(),
            Problem::CaAsServerCertificate => "a CA certificate as the server's own".to_owned(),
            Problem::WrongName { expected } => format!("not valid for {expected}"),
            Problem::Expired => "expired".to_owned(),
            Problem::NotYetValid => "not valid yet".to_owned(),
            Problem::Other(err) => match err {
                rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(inner))) => {
                    inner.to_string()
                }
                rustls::Error::InvalidCertificate(problem) => problem.to_string(),
                other => other.to_string(),
            },
        }
    }
}

impl fmt::Display for RefusedCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let presented = match &self.presented {
            Ok(summary) => summary,
            Err(cause) => {
                return write!(
                    f,
                    "the server presented a certificate that cannot be read ({cause}), refused as {}",
                    self.problem_text()
                );
            }
        };
        let setting = &self.user_setting;
        let given = self.user_certificates_text();
        write!(
            f,
            "the server presented {}, which ",
            presented.presented_text()
        )?;
        if self.matches_user_certificate {
            write!(f, "matches {setting} but ")?;
        }
        match &self.problem {
            Problem::UnknownIssuer { detail } => {
                if given.is_empty() {
                    write!(f, "is not signed by a trusted CA")?;
                } else {
                    write!(
                        f,
                        "neither matches {setting} ({given}) nor is signed by a trusted CA"
                    )?;
                }
                if let Some(detail) = detail {
                    write!(f, " ({detail})")?;
                }
                if given.is_empty() {
                    write!(f, ", and {setting} is not set")?;
                }
                write!(f, "; set {setting} to the server's certificate or its CA's")
            }
            Problem::CaAsServerCertificate => {
                write!(
                    f,
                    "is a CA certificate (basic constraints CA:TRUE, as `openssl req -x509` makes \
                     them), trusted as a server's own only when {setting} holds exactly it"
                )?;
                if given.is_empty() {
                    write!(f, ", and {setting} is not set")?;
                } else {
                    write!(f, ", and {setting} holds another ({given})")?;
                }
                write!(f, "; set {setting} to the server's certificate")
            }
            Problem::WrongName { expected } => write!(
                f,
                "is not valid for {expected} (it is for {}); connect to a name it is valid for, \
                 or give the server a certificate for {expected}",
                presented.names_text()
            ),
            Problem::Expired => {
                write!(
                    f,
                    "expired at {} (it is now {}); give the server a new certificate",
                    time_text(presented.not_after),
                    time_text(self.now)
                )?;
                if self.matches_user_certificate {
                    write!(f, " and put it in {setting}")?;
                }
                Ok(())
            }
            Problem::NotYetValid => write!(
                f,
                "is not valid before {} (it is now {}); check the clocks of the server and of \
                 this machine",
                time_text(presented.not_before),
                time_text(self.now)
            ),
            Problem::Other(_) => write!(f, "was refused: {}", self.problem_text()),
        }
    }
}

impl std::error::Error for RefusedCertificate {}

impl From<RefusedCertificate> for rustls::Error {
    fn from(refused: RefusedCertificate) -> Self {
        rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(refused))))
    }
}
