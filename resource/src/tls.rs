//! Which server certificates our HTTPS clients trust, and why one was refused.
//!
//! A [`ServerTrust`] is CA certificates (Mozilla's, the system's) plus the certificates a user
//! gave in a setting such as `source.ca_cert`. The user's certificates are trusted as CAs and
//! also pinned: a server that presents exactly (byte for byte) one of them is trusted whatever
//! its basic constraints, so that the self-signed certificate `openssl req -x509` makes, which
//! says CA:TRUE and which webpki refuses as a server's own, works once it is in `ca_cert`, as it
//! does with `curl --cacert`. The host name and validity dates of a pinned certificate are still
//! checked; every other certificate is verified by webpki as before.
//!
//! A refused certificate comes back from the connection as a [`RefusedCertificate`], which says
//! what the server presented, what was trusted, and what to change.
//!
//! The pieces, for any client of ours that takes a CA file (the resource today, a CLI later):
//! [`ServerTrust`] builds the rustls [`PinningVerifier`] or a whole `ClientConfig`;
//! [`connector::agent`] makes a ureq agent that uses that `ClientConfig`, since ureq's own TLS
//! settings take no verifier; [`certificate`] describes a certificate for messages.

pub mod certificate;
pub mod connector;
mod refusal;
mod verifier;

use std::sync::Arc;

use rustls::client::{VerifierBuilderError, WebPkiServerVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, RootCertStore};

pub use certificate::CertificateSummary;
pub use refusal::{Problem, RefusedCertificate};
pub use verifier::PinningVerifier;
use verifier::UserCertificate;

/// The certificates a client trusts for the servers it talks to.
#[derive(Debug, Clone)]
pub struct ServerTrust {
    roots: Vec<CertificateDer<'static>>,
    user_certificates: Vec<UserCertificate>,
    user_setting: String,
}

impl ServerTrust {
    /// Trusts nothing yet. `user_setting` is where the user gives certificates
    /// (`source.ca_cert`); messages name it.
    pub fn new(user_setting: &str) -> Self {
        Self {
            roots: Vec::new(),
            user_certificates: Vec::new(),
            user_setting: user_setting.to_owned(),
        }
    }

    /// Also trusts these CA certificates.
    pub fn with_roots(mut self, roots: impl IntoIterator<Item = CertificateDer<'static>>) -> Self {
        self.roots.extend(roots);
        self
    }

    /// Also trusts the certificates the user gave: as CAs, and each as the certificate of any
    /// server that presents exactly it. Fails, naming the certificate, if one cannot be read.
    pub fn with_user_certificates(
        mut self,
        certificates: impl IntoIterator<Item = CertificateDer<'static>>,
    ) -> Result<Self, String> {
        for (index, der) in certificates.into_iter().enumerate() {
            let summary = CertificateSummary::parse(&der).map_err(|cause| {
                format!(
                    "certificate {} is not a valid X.509 certificate: {cause}",
                    index + 1
                )
            })?;
            self.roots.push(der.clone());
            self.user_certificates
                .push(UserCertificate { der, summary });
        }
        Ok(self)
    }

    /// A verifier for rustls that uses `provider`'s signature algorithms.
    pub fn verifier(
        &self,
        provider: Arc<CryptoProvider>,
    ) -> Result<PinningVerifier, VerifierBuilderError> {
        let mut roots = RootCertStore::empty();
        // As ureq does: a root webpki cannot use is left out rather than failing every request.
        roots.add_parsable_certificates(self.roots.iter().cloned());
        let webpki =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider).build()?;
        Ok(PinningVerifier {
            webpki,
            user_certificates: self.user_certificates.clone(),
            user_setting: self.user_setting.clone(),
        })
    }

    /// A rustls client configuration with ring, every TLS version rustls offers and
    /// [`ServerTrust::verifier`].
    pub fn client_config(&self) -> Result<ClientConfig, VerifierBuilderError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = self.verifier(Arc::clone(&provider))?;
        let config = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(rustls::ALL_VERSIONS)
            .expect("ring supports every TLS version rustls has")
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth();
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    //! The verifier on its own, with the time of the check passed in. Broken on purpose to see
    //! these fail: without the pinned-certificate branch, the three `pinned_...` tests failed
    //! ("... is a CA certificate"); with the branch skipping its name check or its date check,
    //! the certificate was trusted for another name or outside its dates.

    use std::time::Duration;

    use rcgen::{CertificateParams, CertifiedIssuer, KeyPair};
    use rustls::client::danger::ServerCertVerifier;
    use rustls::pki_types::{ServerName, UnixTime};

    use super::*;

    /// 2025-06-01, inside the test certificates' validity (2025-01-01 to 2026-01-01).
    const JUNE_2025: u64 = 1_748_736_000;
    /// 2027-01-01, after it.
    const JANUARY_2027: u64 = 1_798_761_600;
    /// 2024-06-01, before it.
    const JUNE_2024: u64 = 1_717_200_000;

    fn params(common_name: &str, names: &[&str], is_ca: bool) -> CertificateParams {
        let mut params = locker_testkit::certificate_params(common_name, names, is_ca);
        params.not_before = rcgen::date_time_ymd(2025, 1, 1);
        params.not_after = rcgen::date_time_ymd(2026, 1, 1);
        params
    }

    /// A self-signed certificate, CA:TRUE when `is_ca` (as `openssl req -x509` makes them).
    fn self_signed(common_name: &str, names: &[&str], is_ca: bool) -> CertificateDer<'static> {
        let key = KeyPair::generate().unwrap();
        let certificate = params(common_name, names, is_ca).self_signed(&key).unwrap();
        certificate.der().clone()
    }

    /// A CA, and a server certificate for localhost and 127.0.0.1 that it signed.
    fn ca_and_server() -> (CertificateDer<'static>, CertificateDer<'static>) {
        let ca_key = KeyPair::generate().unwrap();
        let ca = CertifiedIssuer::self_signed(params("Example CA", &[], true), ca_key).unwrap();
        let key = KeyPair::generate().unwrap();
        let server = params("locker.example", &["localhost", "127.0.0.1"], false)
            .signed_by(&key, &ca)
            .unwrap();
        (ca.der().clone(), server.der().clone())
    }

    /// A verifier trusting Mozilla's roots, `roots` and `user_certificates`.
    fn verifier(
        roots: &[CertificateDer<'static>],
        user_certificates: &[CertificateDer<'static>],
    ) -> PinningVerifier {
        ServerTrust::new("source.ca_cert")
            .with_roots(webpki_root_certs::TLS_SERVER_ROOT_CERTS.iter().cloned())
            .with_roots(roots.iter().cloned())
            .with_user_certificates(user_certificates.iter().cloned())
            .unwrap()
            .verifier(Arc::new(rustls::crypto::ring::default_provider()))
            .unwrap()
    }

    /// Verifies `presented` for `host` at `now`; the refusal as its message.
    fn verify(
        verifier: &PinningVerifier,
        presented: &CertificateDer<'_>,
        host: &str,
        now: u64,
    ) -> Result<(), String> {
        let server_name = ServerName::try_from(host).unwrap();
        let now = UnixTime::since_unix_epoch(Duration::from_secs(now));
        match verifier.verify_server_cert(presented, &[], &server_name, &[], now) {
            Ok(_) => Ok(()),
            Err(err) => Err(RefusedCertificate::in_rustls_error(&err)
                .unwrap_or_else(|| panic!("expected a RefusedCertificate, got {err:?}"))
                .to_string()),
        }
    }

    #[test]
    fn pinned_ca_certificate_is_trusted_for_its_names_while_valid() {
        let openssl_style = self_signed("localhost", &["localhost", "127.0.0.1"], true);
        let verifier = verifier(&[], std::slice::from_ref(&openssl_style));
        for host in ["localhost", "127.0.0.1"] {
            assert_eq!(
                verify(&verifier, &openssl_style, host, JUNE_2025),
                Ok(()),
                "the pinned certificate should be trusted for {host}"
            );
        }
    }

    #[test]
    fn pinned_certificate_is_refused_for_another_name() {
        let openssl_style = self_signed("localhost", &["localhost", "127.0.0.1"], true);
        let verifier = verifier(&[], std::slice::from_ref(&openssl_style));
        assert_eq!(
            verify(&verifier, &openssl_style, "other.example", JUNE_2025),
            Err(
                "the server presented a certificate for CN=localhost issued by CN=localhost \
                 (self-signed), which matches source.ca_cert but is not valid for other.example \
                 (it is for DNS:localhost or IP:127.0.0.1); connect to a name it is valid for, \
                 or give the server a certificate for other.example"
                    .to_owned()
            )
        );
    }

    #[test]
    fn pinned_certificate_is_refused_outside_its_dates() {
        let openssl_style = self_signed("localhost", &["localhost"], true);
        let verifier = verifier(&[], std::slice::from_ref(&openssl_style));
        assert_eq!(
            verify(&verifier, &openssl_style, "localhost", JANUARY_2027),
            Err(
                "the server presented a certificate for CN=localhost issued by CN=localhost \
                 (self-signed), which matches source.ca_cert but expired at 2026-01-01 00:00:00 \
                 UTC (it is now 2027-01-01 00:00:00 UTC); give the server a new certificate and \
                 put it in source.ca_cert"
                    .to_owned()
            )
        );
        assert_eq!(
            verify(&verifier, &openssl_style, "localhost", JUNE_2024),
            Err(
                "the server presented a certificate for CN=localhost issued by CN=localhost \
                 (self-signed), which matches source.ca_cert but is not valid before 2025-01-01 \
                 00:00:00 UTC (it is now 2024-06-01 00:00:00 UTC); check the clocks of the \
                 server and of this machine"
                    .to_owned()
            )
        );
    }

    #[test]
    fn unpinned_ca_certificate_is_refused_saying_pinning_would_trust_it() {
        let openssl_style = self_signed("localhost", &["localhost"], true);
        assert_eq!(
            verify(&verifier(&[], &[]), &openssl_style, "localhost", JUNE_2025),
            Err(
                "the server presented a certificate for CN=localhost issued by CN=localhost \
                 (self-signed), which is a CA certificate (basic constraints CA:TRUE, as \
                 `openssl req -x509` makes them), trusted as a server's own only when \
                 source.ca_cert holds exactly it, and source.ca_cert is not set; set \
                 source.ca_cert to the server's certificate"
                    .to_owned()
            )
        );
    }

    #[test]
    fn another_certificate_with_the_same_subject_is_not_pinned() {
        let given = self_signed("localhost", &["localhost"], true);
        let presented = self_signed("localhost", &["localhost"], true);
        let refusal = verify(&verifier(&[], &[given]), &presented, "localhost", JUNE_2025)
            .expect_err("a certificate that only shares the subject must not be trusted");
        assert!(
            refusal.contains("and source.ca_cert holds another (CN=localhost, self-signed)"),
            "expected the given certificate named in: {refusal}"
        );
    }

    #[test]
    fn unknown_self_signed_certificate_is_refused_naming_what_was_trusted() {
        let presented = self_signed("localhost", &["localhost"], false);
        let other = self_signed("other", &["other"], true);
        assert_eq!(
            verify(&verifier(&[], &[other]), &presented, "localhost", JUNE_2025),
            Err(
                "the server presented a certificate for CN=localhost issued by CN=localhost \
                 (self-signed), which neither matches source.ca_cert (CN=other, self-signed) nor \
                 is signed by a trusted CA; set source.ca_cert to the server's certificate or \
                 its CA's"
                    .to_owned()
            )
        );
        assert_eq!(
            verify(&verifier(&[], &[]), &presented, "localhost", JUNE_2025),
            Err(
                "the server presented a certificate for CN=localhost issued by CN=localhost \
                 (self-signed), which is not signed by a trusted CA, and source.ca_cert is not \
                 set; set source.ca_cert to the server's certificate or its CA's"
                    .to_owned()
            )
        );
    }

    #[test]
    fn ca_signed_certificate_is_verified_by_webpki_as_before() {
        let (ca, server) = ca_and_server();
        for trusted in [
            verifier(std::slice::from_ref(&ca), &[]),
            verifier(&[], &[ca]),
        ] {
            assert_eq!(verify(&trusted, &server, "127.0.0.1", JUNE_2025), Ok(()));
            assert_eq!(
                verify(&trusted, &server, "other.example", JUNE_2025),
                Err(
                    "the server presented a certificate for CN=locker.example issued by \
                     CN=Example CA, which is not valid for other.example (it is for \
                     DNS:localhost or IP:127.0.0.1); connect to a name it is valid for, or give \
                     the server a certificate for other.example"
                        .to_owned()
                )
            );
            let expired = verify(&trusted, &server, "localhost", JANUARY_2027).unwrap_err();
            assert!(
                expired.contains("which expired at 2026-01-01 00:00:00 UTC"),
                "expected the end of validity in: {expired}"
            );
        }
    }

    #[test]
    fn a_user_certificate_that_is_not_x509_is_refused_by_number() {
        let junk = CertificateDer::from(b"not a certificate".to_vec());
        let err = ServerTrust::new("source.ca_cert")
            .with_user_certificates([self_signed("a", &["a"], false), junk])
            .unwrap_err();
        assert!(
            err.starts_with("certificate 2 is not a valid X.509 certificate"),
            "expected the second certificate named, got: {err}"
        );
    }
}
