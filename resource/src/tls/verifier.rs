//! The server certificate verifier: webpki, and exact copies of the user's certificates.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{WebPkiServerVerifier, verify_server_name};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{CertificateError, DigitallySignedStruct, OtherError, SignatureScheme};

use super::certificate::CertificateSummary;
use super::refusal::{Problem, RefusedCertificate};

/// A certificate the user gave, kept with its summary for messages.
#[derive(Debug, Clone)]
pub(super) struct UserCertificate {
    pub(super) der: CertificateDer<'static>,
    pub(super) summary: CertificateSummary,
}

/// Verifies a server's certificate: one that is byte for byte one of the user's certificates
/// is trusted if it is valid for the server's name and today's date, whatever its basic
/// constraints; any other is verified by webpki. Handshake signatures are always checked by
/// webpki with the crypto provider's algorithms.
///
/// Build it with [`super::ServerTrust::verifier`].
#[derive(Debug)]
pub struct PinningVerifier {
    pub(super) webpki: Arc<WebPkiServerVerifier>,
    pub(super) user_certificates: Vec<UserCertificate>,
    pub(super) user_setting: String,
}

impl PinningVerifier {
    /// The checks left for a certificate the user gave: name and dates. Its signature needs no
    /// check (the user trusts these very bytes), and the handshake signature, checked later by
    /// rustls, proves the server holds its key.
    fn verify_user_certificate(
        &self,
        certificate: &UserCertificate,
        server_name: &ServerName<'_>,
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let problem = match ParsedCertificate::try_from(&certificate.der)
            .and_then(|parsed| verify_server_name(&parsed, server_name))
        {
            Err(err) => Some(problem_of(err, server_name)),
            Ok(()) => {
                let now = unix_seconds(now);
                if now < certificate.summary.not_before {
                    Some(Problem::NotYetValid)
                } else if now > certificate.summary.not_after {
                    Some(Problem::Expired)
                } else {
                    None
                }
            }
        };
        match problem {
            None => Ok(ServerCertVerified::assertion()),
            Some(problem) => Err(self
                .refusal(Ok(certificate.summary.clone()), true, problem, now)
                .into()),
        }
    }

    fn refusal(
        &self,
        presented: Result<CertificateSummary, String>,
        matches_user_certificate: bool,
        problem: Problem,
        now: UnixTime,
    ) -> RefusedCertificate {
        RefusedCertificate {
            presented,
            matches_user_certificate,
            problem,
            user_certificates: self
                .user_certificates
                .iter()
                .map(|certificate| certificate.summary.clone())
                .collect(),
            user_setting: self.user_setting.clone(),
            now: unix_seconds(now),
        }
    }
}

impl ServerCertVerifier for PinningVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Some(certificate) = self
            .user_certificates
            .iter()
            .find(|certificate| certificate.der.as_ref() == end_entity.as_ref())
        {
            return self.verify_user_certificate(certificate, server_name, now);
        }
        self.webpki
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
            .map_err(|err| {
                let problem = problem_of(err, server_name);
                let presented = CertificateSummary::parse(end_entity);
                self.refusal(presented, false, problem, now).into()
            })
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

/// What webpki's (or rustls's) error means, in the terms of [`Problem`].
fn problem_of(err: rustls::Error, server_name: &ServerName<'_>) -> Problem {
    let rustls::Error::InvalidCertificate(certificate_error) = &err else {
        return Problem::Other(err);
    };
    match certificate_error {
        CertificateError::UnknownIssuer => Problem::UnknownIssuer { detail: None },
        // webpki reports these two when a trusted certificate has the issuer's name but is not
        // what signed it (a machine's snakeoil certificate is often named CN=localhost too).
        CertificateError::BadSignature => Problem::UnknownIssuer {
            detail: Some("a trusted certificate has its issuer's name but did not sign it"),
        },
        CertificateError::UnsupportedSignatureAlgorithmContext { .. }
        | CertificateError::UnsupportedSignatureAlgorithmForPublicKeyContext { .. } => {
            Problem::UnknownIssuer {
                detail: Some(
                    "a trusted certificate has its issuer's name but a key that cannot \
                     check its signature, or its signature algorithm is not supported",
                ),
            }
        }
        CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
            Problem::WrongName {
                expected: server_name.to_str().into_owned(),
            }
        }
        CertificateError::Expired | CertificateError::ExpiredContext { .. } => Problem::Expired,
        CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
            Problem::NotYetValid
        }
        CertificateError::Other(OtherError(inner))
            if inner.downcast_ref::<webpki::Error>() == Some(&webpki::Error::CaUsedAsEndEntity) =>
        {
            Problem::CaAsServerCertificate
        }
        _ => Problem::Other(err),
    }
}

fn unix_seconds(time: UnixTime) -> i64 {
    i64::try_from(time.as_secs()).unwrap_or(i64::MAX)
}
