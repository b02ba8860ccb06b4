//! Reading CA certificates to trust, for the clients the binary makes (the command-line client
//! and the Concourse watcher).

use std::path::Path;

/// The CA certificates of the PEM file at `path`; `what` names the setting in errors (like
/// `--ca-cert` or `CONCOURSE_CA_CERT`).
pub fn ca_certificates(
    path: &Path,
    what: &str,
) -> Result<Vec<ureq::tls::Certificate<'static>>, String> {
    let shown = path.display();
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {what} {shown}: {e}"))?;
    let mut certificates = Vec::new();
    for item in ureq::tls::parse_pem(&pem) {
        match item {
            Ok(ureq::tls::PemItem::Certificate(certificate)) => certificates.push(certificate),
            Ok(_) => {}
            Err(e) => {
                return Err(format!(
                    "{what} {shown} is not a PEM file of certificates: {e}"
                ));
            }
        }
    }
    if certificates.is_empty() {
        return Err(format!(
            "{what} {shown} holds no PEM certificate (expected -----BEGIN CERTIFICATE-----)"
        ));
    }
    Ok(certificates)
}
