//! The system's CA certificates (the bundle and directory `SSL_CERT_FILE`/`SSL_CERT_DIR` or
//! openssl's defaults name), read once per process. One reading parses ~150 PEM certificates:
//! 3.5 ms warm, 10 ms cold on a build machine, and a boot used to do it three times (the AWS
//! check, the git remote's client, DescribeTags' client). The AWS SDK keeps its own reading.

use std::sync::OnceLock;

use rustls::pki_types::CertificateDer;

pub struct Roots {
    /// Every certificate rustls can take as a trust anchor; the others are left out, as
    /// rustls' own loaders do, so one bad file in the directory breaks no client.
    pub certs: Vec<CertificateDer<'static>>,
    /// Why files or certificates could not be read, for the message when `certs` is empty.
    pub errors: Vec<String>,
}

pub fn roots() -> &'static Roots {
    static ROOTS: OnceLock<Roots> = OnceLock::new();
    ROOTS.get_or_init(|| {
        let found = rustls_native_certs::load_native_certs();
        let mut errors: Vec<String> = found.errors.iter().map(ToString::to_string).collect();
        let (certs, unusable): (Vec<_>, Vec<_>) = found
            .certs
            .into_iter()
            .partition(|cert| rustls::RootCertStore::empty().add(cert.clone()).is_ok());
        if !unusable.is_empty() {
            errors.push(format!(
                "{} certificates are not usable as trust anchors",
                unusable.len()
            ));
        }
        Roots { certs, errors }
    })
}

/// Why no certificate was found, when [`roots`] holds none: what was read and failed.
pub fn none_found() -> Option<String> {
    let roots = roots();
    roots.certs.is_empty().then(|| roots.errors.join("; "))
}

/// A reqwest client builder that trusts [`roots`] and nothing else (reqwest would otherwise read
/// the CA store again for every client).
pub fn https_client() -> reqwest::ClientBuilder {
    reqwest::Client::builder().tls_certs_only(
        roots().certs.iter().map(|der| {
            reqwest::Certificate::from_der(der).expect("with rustls, DER is only copied")
        }),
    )
}

/// The certificate error a TLS peer was refused with, found among `error`'s causes. An
/// io::Error's source() skips the error it wraps (and the TLS stack's errors come wrapped in
/// io::Errors), so those are opened too.
pub fn refused_certificate<'a>(
    error: &'a (dyn std::error::Error + 'static),
) -> Option<&'a rustls::Error> {
    if let Some(tls @ rustls::Error::InvalidCertificate(_)) = error.downcast_ref::<rustls::Error>()
    {
        return Some(tls);
    }
    let wrapped = error
        .downcast_ref::<std::io::Error>()
        .and_then(std::io::Error::get_ref)
        .map(|inner| inner as &(dyn std::error::Error + 'static));
    wrapped
        .into_iter()
        .chain(error.source())
        .find_map(refused_certificate)
}
