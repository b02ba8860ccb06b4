//! What a certificate says about itself, in words for error messages.

use std::fmt;
use std::net::IpAddr;

use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;
use x509_parser::time::ASN1Time;

/// The parts of a certificate a person needs to recognise it: who it is for, who issued it,
/// when it is valid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateSummary {
    /// The subject, `CN=localhost, O=Example`; empty when the certificate has none.
    pub subject: String,
    /// The issuer, written as the subject is.
    pub issuer: String,
    /// Whether subject and issuer are the same name, as in a self-signed certificate.
    pub self_issued: bool,
    /// Whether its basic constraints say CA:TRUE.
    pub is_ca: bool,
    /// Its subject alternative names: `DNS:localhost`, `IP:127.0.0.1`.
    pub names: Vec<String>,
    /// Start of validity, seconds since the Unix epoch.
    pub not_before: i64,
    /// End of validity, seconds since the Unix epoch.
    pub not_after: i64,
}

impl CertificateSummary {
    /// Reads a DER certificate; the error says what is wrong with it.
    pub fn parse(der: &[u8]) -> Result<Self, String> {
        let (_, certificate) = X509Certificate::from_der(der).map_err(|err| err.to_string())?;
        let names = match certificate.subject_alternative_name() {
            Ok(Some(extension)) => extension
                .value
                .general_names
                .iter()
                .filter_map(general_name_text)
                .collect(),
            _ => Vec::new(),
        };
        Ok(Self {
            subject: certificate.subject().to_string(),
            issuer: certificate.issuer().to_string(),
            self_issued: certificate.subject().as_raw() == certificate.issuer().as_raw(),
            is_ca: certificate.is_ca(),
            names,
            not_before: certificate.validity().not_before.timestamp(),
            not_after: certificate.validity().not_after.timestamp(),
        })
    }

    /// The subject, or its alternative names when the subject is empty.
    pub fn subject_text(&self) -> String {
        if !self.subject.is_empty() {
            self.subject.clone()
        } else if !self.names.is_empty() {
            self.names.join(", ")
        } else {
            "an empty subject".to_owned()
        }
    }

    /// `a certificate for CN=localhost issued by CN=Example CA`, with ` (self-signed)` after a
    /// self-issued one, as the start of a sentence about what a server presented.
    pub fn presented_text(&self) -> String {
        let issuer = if self.issuer.is_empty() {
            "an empty issuer"
        } else {
            &self.issuer
        };
        let self_signed = if self.self_issued {
            " (self-signed)"
        } else {
            ""
        };
        format!(
            "a certificate for {} issued by {issuer}{self_signed}",
            self.subject_text()
        )
    }

    /// The alternative names for a sentence: `DNS:a or IP:b`, or `no names`.
    pub fn names_text(&self) -> String {
        match self.names.as_slice() {
            [] => "no names".to_owned(),
            [one] => one.clone(),
            [first @ .., last] => format!("{} or {last}", first.join(", ")),
        }
    }
}

/// Short enough for a list of trusted certificates: `CN=localhost, self-signed` or
/// `CN=server issued by CN=Example CA`.
impl fmt::Display for CertificateSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.self_issued {
            write!(f, "{}, self-signed", self.subject_text())
        } else {
            write!(f, "{} issued by {}", self.subject_text(), self.issuer)
        }
    }
}

/// A time from a certificate as `2026-05-01 12:00:00 UTC`.
pub fn time_text(unix_seconds: i64) -> String {
    match ASN1Time::from_timestamp(unix_seconds) {
        Ok(time) => {
            let time = time.to_datetime();
            format!(
                "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
                time.year(),
                u8::from(time.month()),
                time.day(),
                time.hour(),
                time.minute(),
                time.second()
            )
        }
        Err(_) => format!("{unix_seconds} s after 1970"),
    }
}

fn general_name_text(name: &GeneralName<'_>) -> Option<String> {
    match name {
        GeneralName::DNSName(dns) => Some(format!("DNS:{dns}")),
        GeneralName::IPAddress(bytes) => {
            let ip = match bytes.len() {
                4 => IpAddr::from(<[u8; 4]>::try_from(*bytes).ok()?),
                16 => IpAddr::from(<[u8; 16]>::try_from(*bytes).ok()?),
                _ => return None,
            };
            Some(format!("IP:{ip}"))
        }
        _ => None,
    }
}
