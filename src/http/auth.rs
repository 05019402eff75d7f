//! The API key check: every route but the health check needs `X-API-Key` when the
//! server was started with a key.

use hyper::header::HeaderMap;
use subtle::ConstantTimeEq;

/// The request header that carries the key.
pub const API_KEY_HEADER: &str = "x-api-key";

/// The key clients must send. Debug output hides it so it cannot reach a log.
#[derive(Clone)]
pub struct ApiKey(Vec<u8>);

impl ApiKey {
    /// Takes a key from a file or the environment, without the trailing newline an editor
    /// adds. Returns `None` for an empty key, which would let every client in.
    pub fn new(text: &str) -> Option<Self> {
        let key = text.trim_end_matches(['\n', '\r']);
        (!key.is_empty()).then(|| Self(key.as_bytes().to_vec()))
    }

    /// Checks the request's header in constant time, so the comparison does not reveal
    /// how many leading bytes of a guess were right.
    pub fn accepts(&self, headers: &HeaderMap) -> bool {
        headers
            .get(API_KEY_HEADER)
            .is_some_and(|value| bool::from(value.as_bytes().ct_eq(&self.0)))
    }
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiKey(<hidden>)")
    }
}

#[cfg(test)]
mod tests {
    use hyper::header::HeaderValue;

    use super::*;

    fn headers(value: Option<&str>) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if let Some(value) = value {
            headers.insert(API_KEY_HEADER, HeaderValue::from_str(value).unwrap());
        }
        headers
    }

    #[test]
    fn key_accepts_only_exact_value() {
        let key = ApiKey::new("s3cret\n").unwrap();

        assert!(key.accepts(&headers(Some("s3cret"))));
        assert!(!key.accepts(&headers(Some("s3cret "))));
        assert!(!key.accepts(&headers(Some("s3cre"))));
        assert!(!key.accepts(&headers(Some(""))));
        assert!(!key.accepts(&headers(None)));
    }

    #[test]
    fn empty_key_is_rejected() {
        assert!(ApiKey::new("").is_none());
        assert!(ApiKey::new("\n").is_none());
    }

    #[test]
    fn debug_hides_the_key() {
        assert_eq!(format!("{:?}", ApiKey::new("s3cret").unwrap()), "ApiKey(<hidden>)");
    }
}
