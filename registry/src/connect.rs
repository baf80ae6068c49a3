//! One conversation with a registry about one reference: the `oci-client` set up for it (TLS
//! provider, HTTPS or allowed plain HTTP, credentials), and its errors mapped to
//! [`RegistryError`] variants that name the reference.

use std::sync::Once;
use std::time::Duration;

use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};

use crate::{Auth, RegistryError};

/// How long a TCP connection (and TLS handshake) to a registry may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the registry may stay silent in the middle of a response.
const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// A client set up for one reference.
pub(crate) struct Session {
    pub(crate) client: Client,
    pub(crate) auth: RegistryAuth,
    pub(crate) reference: Reference,
    /// The reference as the caller wrote it, for error messages.
    pub(crate) text: String,
    scheme: &'static str,
}

impl Session {
    /// Parses `reference` and builds a client for its registry: HTTPS, or plain HTTP for that
    /// registry only when `allow_http`.
    pub(crate) fn new(
        reference: &str,
        auth: &Auth,
        allow_http: bool,
    ) -> Result<Self, RegistryError> {
        let parsed: Reference =
            reference
                .parse()
                .map_err(|source| RegistryError::InvalidReference {
                    reference: reference.to_string(),
                    source,
                })?;
        install_crypto_provider();
        let registry = parsed.resolve_registry().to_string();
        let (protocol, scheme) = if allow_http {
            (ClientProtocol::HttpsExcept(vec![registry]), "http")
        } else {
            (ClientProtocol::Https, "https")
        };
        let config = ClientConfig {
            protocol,
            // Indexes are resolved here (pull.rs), so the raw manifests are kept.
            platform_resolver: None,
            connect_timeout: Some(CONNECT_TIMEOUT),
            read_timeout: Some(READ_TIMEOUT),
            ..ClientConfig::default()
        };
        let client = Client::try_from(config).map_err(|source| RegistryError::Client { source })?;
        let auth = match auth {
            Auth::Anonymous => RegistryAuth::Anonymous,
            Auth::Basic { username, password } => {
                RegistryAuth::Basic(username.clone(), password.clone())
            }
        };
        Ok(Self {
            client,
            auth,
            reference: parsed,
            text: reference.to_string(),
            scheme,
        })
    }

    /// The registry's `host:port`.
    pub(crate) fn registry(&self) -> String {
        self.reference.resolve_registry().to_string()
    }

    /// Maps an `oci-client` error to the variant saying what went wrong with this reference.
    pub(crate) fn error(&self, source: OciDistributionError) -> RegistryError {
        let reference = self.text.clone();
        let registry = self.registry();
        match classify(&source) {
            Kind::Unknown => RegistryError::UnknownImage {
                reference,
                registry,
                source,
            },
            Kind::Unauthorized => RegistryError::Unauthorized {
                reference,
                registry,
                source,
            },
            Kind::Unreachable => RegistryError::Unreachable {
                reference,
                registry,
                scheme: self.scheme,
                source,
            },
            Kind::Digest { expected, actual } => RegistryError::DigestMismatch {
                reference,
                digest: expected,
                actual,
            },
            Kind::Other => RegistryError::Registry { reference, source },
        }
    }
}

enum Kind {
    Unknown,
    Unauthorized,
    Unreachable,
    Digest { expected: String, actual: String },
    Other,
}

fn classify(error: &OciDistributionError) -> Kind {
    match error {
        OciDistributionError::RegistryError { envelope, .. } => {
            let codes = || envelope.errors.iter().map(|e| &e.code);
            if codes().any(|c| {
                matches!(
                    c,
                    OciErrorCode::ManifestUnknown
                        | OciErrorCode::NameUnknown
                        | OciErrorCode::BlobUnknown
                        | OciErrorCode::NotFound
                )
            }) {
                Kind::Unknown
            } else if codes()
                .any(|c| matches!(c, OciErrorCode::Unauthorized | OciErrorCode::Denied))
            {
                Kind::Unauthorized
            } else {
                Kind::Other
            }
        }
        OciDistributionError::ServerError { code: 404, .. } => Kind::Unknown,
        OciDistributionError::ServerError {
            code: 401 | 403, ..
        }
        | OciDistributionError::UnauthorizedError { .. }
        | OciDistributionError::AuthenticationFailure(_) => Kind::Unauthorized,
        OciDistributionError::RequestError(e) if e.is_connect() || e.is_timeout() => {
            Kind::Unreachable
        }
        OciDistributionError::DigestError(oci_client::errors::DigestError::VerificationError {
            expected,
            actual,
        }) => Kind::Digest {
            expected: expected.clone(),
            actual: actual.clone(),
        },
        _ => Kind::Other,
    }
}

/// reqwest is built without a default TLS crypto provider (so no C toolchain-heavy aws-lc):
/// use rustls's `ring` provider, once per process, unless the program installed another.
fn install_crypto_provider() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if rustls::crypto::CryptoProvider::get_default().is_none() {
            // Losing a race with another installer is fine: some provider is then in place.
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
    });
}
