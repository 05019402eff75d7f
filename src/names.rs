//! Validated names: template names, image references and ZFS dataset names.
//!
//! Untrusted strings are parsed here once, at the edge. Everything below takes these
//! types, so an unchecked string never reaches a command line.

use std::fmt;
use std::str::FromStr;

use serde::{Serialize, Serializer};

/// Maximum length of a template name, so that the jail name derived from it stays within
/// FreeBSD's limits and the dataset name within ZFS's.
pub const MAX_TEMPLATE_NAME: usize = 63;

/// ZFS's limit on a full dataset or snapshot name, in bytes (ZFS_MAX_DATASET_NAME_LEN
/// is 256 including the terminating NUL).
pub const MAX_DATASET_NAME: usize = 255;

/// The scheme prefix of an image source in Coppice's API.
pub const OCI_SCHEME: &str = "oci:";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error(
        "invalid template name {value:?}: {reason}; use a lowercase letter followed by up to {max} lowercase letters, digits, '-' or '_'",
        max = MAX_TEMPLATE_NAME - 1
    )]
    TemplateName { value: String, reason: &'static str },

    #[error("invalid image source {value:?}: {reason}; use oci:HOST/PATH[:TAG][@DIGEST], for example oci:127.0.0.1:5000/freebsd/base:14.1")]
    ImageRef { value: String, reason: String },

    #[error("invalid ZFS dataset name {value:?}: {reason}; use slash-separated components of letters, digits, '_', '-', '.' and ':', such as zroot/jails")]
    Dataset { value: String, reason: String },
}

/// A template name: the `NAME` of `<jails>/NAME-template`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TemplateName(String);

impl TemplateName {
    pub fn parse(value: &str) -> Result<Self, NameError> {
        let reject = |reason| Err(NameError::TemplateName { value: value.to_owned(), reason });

        let Some(first) = value.chars().next() else {
            return reject("it is empty");
        };
        if value.len() > MAX_TEMPLATE_NAME {
            return reject("it is longer than 63 characters");
        }
        if !first.is_ascii_lowercase() {
            return reject("it must start with a lowercase letter");
        }
        if let Some(bad) = value
            .chars()
            .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-' || *c == '_'))
        {
            return match bad {
                '.' => reject("it contains '.'"),
                '/' => reject("it contains '/'"),
                '@' => reject("it contains '@'"),
                c if c.is_whitespace() => reject("it contains whitespace"),
                c if c.is_ascii_uppercase() => reject("it contains an uppercase letter"),
                _ => reject("it contains a character other than a-z, 0-9, '-' and '_'"),
            };
        }
        Ok(Self(value.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TemplateName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for TemplateName {
    type Err = NameError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        Self::parse(value)
    }
}

impl Serialize for TemplateName {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

/// A fully qualified registry reference taken from an `oci:` image source.
///
/// Follows the distribution reference grammar (`HOST[:PORT]/PATH[:TAG][@DIGEST]`) with
/// the registry host required, so that a short name can never be resolved through a
/// search list to a registry the caller did not name.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ImageRef {
    domain: String,
    path: String,
    tag: Option<String>,
    digest: Option<String>,
}

impl ImageRef {
    /// Parses an API image source such as `oci:127.0.0.1:5000/freebsd/base:14.1`.
    pub fn parse_source(value: &str) -> Result<Self, NameError> {
        let Some(reference) = value.strip_prefix(OCI_SCHEME) else {
            return Err(image_error(value, "it does not start with \"oci:\""));
        };
        Self::parse_reference(reference).map_err(|reason| image_error(value, reason))
    }

    fn parse_reference(reference: &str) -> Result<Self, String> {
        if reference.is_empty() {
            return Err("the reference after \"oci:\" is empty".to_owned());
        }
        if reference.contains("://") {
            return Err("it carries a transport (\"://\"); give the registry reference alone".to_owned());
        }

        let (rest, digest) = match reference.split_once('@') {
            Some((rest, digest)) => (rest, Some(parse_digest(digest)?)),
            None => (reference, None),
        };

        let (name, tag) = split_tag(rest);
        if let Some(tag) = tag {
            check_tag(tag)?;
        }
        if name.len() > MAX_DATASET_NAME {
            return Err("the repository name is longer than 255 characters".to_owned());
        }

        let Some((domain, path)) = name.split_once('/') else {
            if looks_like_domain(rest) {
                return Err(format!("the repository path after the registry host {rest:?} is missing (for example {rest}/NAME:TAG)"));
            }
            return Err("the registry host is missing (for example 127.0.0.1:5000/NAME)".to_owned());
        };
        if !looks_like_domain(domain) {
            return Err(format!(
                "{domain:?} is not a registry host; a host contains '.' or ':' or is \"localhost\""
            ));
        }
        check_domain(domain)?;
        for component in path.split('/') {
            check_path_component(component)?;
        }

        Ok(Self {
            domain: domain.to_owned(),
            path: path.to_owned(),
            tag: tag.map(str::to_owned),
            digest,
        })
    }

    /// Returns the registry host, with its port if one was given.
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// Returns the reference as `buildah pull` takes it through the `docker://` transport.
    pub fn transport_ref(&self) -> String {
        format!("docker://{self}")
    }

    /// Returns the source as the API spells it, `oci:` included.
    pub fn source(&self) -> String {
        format!("{OCI_SCHEME}{self}")
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.domain, self.path)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

impl FromStr for ImageRef {
    type Err = NameError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        Self::parse_source(value)
    }
}

impl Serialize for ImageRef {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.source())
    }
}

fn image_error(value: &str, reason: impl Into<String>) -> NameError {
    NameError::ImageRef { value: value.to_owned(), reason: reason.into() }
}

/// Splits `name:tag`, where a ':' inside the host's port is not a tag separator.
fn split_tag(rest: &str) -> (&str, Option<&str>) {
    match rest.rfind(':') {
        Some(colon) if !rest[colon + 1..].contains('/') => (&rest[..colon], Some(&rest[colon + 1..])),
        _ => (rest, None),
    }
}

fn looks_like_domain(domain: &str) -> bool {
    domain.contains('.') || domain.contains(':') || domain == "localhost" || domain.starts_with('[')
}

fn check_domain(domain: &str) -> Result<(), String> {
    let (host, port) = if let Some(bracketed) = domain.strip_prefix('[') {
        let Some((address, after)) = bracketed.split_once(']') else {
            return Err(format!("registry host {domain:?} opens '[' without closing it"));
        };
        if address.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(format!("{address:?} in registry host {domain:?} is not an IPv6 address"));
        }
        match after {
            "" => return Ok(()),
            _ => match after.strip_prefix(':') {
                Some(port) => (None, Some(port)),
                None => return Err(format!("registry host {domain:?} has text after ']' that is not a port")),
            },
        }
    } else {
        match domain.split_once(':') {
            Some((host, port)) => (Some(host), Some(port)),
            None => (Some(domain), None),
        }
    };

    if let Some(host) = host {
        for label in host.split('.') {
            let valid = !label.is_empty()
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !label.starts_with('-')
                && !label.ends_with('-');
            if !valid {
                return Err(format!("registry host {domain:?} has an invalid label {label:?}"));
            }
        }
    }
    if let Some(port) = port
        && port.parse::<u16>().is_err()
    {
        return Err(format!("registry port {port:?} is not a number from 0 to 65535"));
    }
    Ok(())
}

/// Checks a path component: lowercase alphanumerics joined by '.', '_', "__" or runs of '-'.
fn check_path_component(component: &str) -> Result<(), String> {
    let invalid = || {
        Err(format!(
            "repository path component {component:?} is invalid; use lowercase letters and digits, joined by '.', '_', '__' or '-'"
        ))
    };
    let bytes = component.as_bytes();
    if bytes.is_empty() || !is_alnum_lower(bytes[0]) || !is_alnum_lower(bytes[bytes.len() - 1]) {
        return invalid();
    }

    let mut index = 0;
    while index < bytes.len() {
        if is_alnum_lower(bytes[index]) {
            index += 1;
            continue;
        }
        let start = index;
        while index < bytes.len() && !is_alnum_lower(bytes[index]) {
            index += 1;
        }
        let separator = &component[start..index];
        let valid = matches!(separator, "." | "_" | "__") || separator.bytes().all(|b| b == b'-');
        if !valid {
            return invalid();
        }
    }
    Ok(())
}

fn is_alnum_lower(byte: u8) -> bool {
    byte.is_ascii_lowercase() || byte.is_ascii_digit()
}

fn check_tag(tag: &str) -> Result<(), String> {
    let mut chars = tag.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
    let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if !first_ok || !rest_ok || tag.len() > 128 {
        return Err(format!(
            "tag {tag:?} is invalid; a tag is 1 to 128 letters, digits, '_', '.' or '-', not starting with '.' or '-'"
        ));
    }
    Ok(())
}

fn parse_digest(digest: &str) -> Result<String, String> {
    let invalid = || format!("digest {digest:?} is invalid; use ALGORITHM:HEX such as sha256:<64 hex digits>");
    let (algorithm, hex) = digest.split_once(':').ok_or_else(invalid)?;

    let algorithm_ok = algorithm
        .split(['+', '.', '-', '_'])
        .all(|part| part.chars().next().is_some_and(|c| c.is_ascii_alphabetic()) && part.chars().all(|c| c.is_ascii_alphanumeric()));
    let hex_ok = hex.len() >= 32 && hex.chars().all(|c| c.is_ascii_hexdigit());
    if !algorithm_ok || !hex_ok {
        return Err(invalid());
    }
    if algorithm == "sha256" && (hex.len() != 64 || hex.chars().any(|c| c.is_ascii_uppercase())) {
        return Err(format!("digest {digest:?} is invalid; a sha256 digest is 64 lowercase hex digits"));
    }
    Ok(digest.to_owned())
}

/// A ZFS dataset name such as `zroot/jails`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Dataset(String);

impl Dataset {
    pub fn parse(value: &str) -> Result<Self, NameError> {
        let reject = |reason: &str| Err(NameError::Dataset { value: value.to_owned(), reason: reason.to_owned() });

        if value.is_empty() {
            return reject("it is empty");
        }
        if value.len() > MAX_DATASET_NAME {
            return reject("it is longer than 255 characters");
        }
        if value.starts_with('/') || value.ends_with('/') {
            return reject("it starts or ends with '/'; a dataset name is not a mount path");
        }
        for component in value.split('/') {
            if component.is_empty() {
                return reject("it has an empty component ('//')");
            }
            if component == "." || component == ".." {
                return reject("it has a '.' or '..' component");
            }
            if !component
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':' | ' '))
            {
                return reject("it contains a character ZFS does not allow in a dataset name (such as '@', '#' or '%')");
            }
        }
        Ok(Self(value.to_owned()))
    }

    /// Returns the dataset of template `name` under this jails dataset, `<jails>/<name>-template`.
    pub fn template(&self, name: &TemplateName) -> Result<Self, NameError> {
        Self::parse(&format!("{}/{}-template", self.0, name))
    }

    pub fn snapshot(&self, snapshot: &str) -> String {
        format!("{}@{snapshot}", self.0)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Dataset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for Dataset {
    type Err = NameError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        Self::parse(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_names_accepted() {
        for name in ["a", "fbsd14-min", "web_2", "x".repeat(63).as_str()] {
            assert!(TemplateName::parse(name).is_ok(), "{name:?} should be valid");
        }
    }

    #[test]
    fn template_names_rejected_with_reason() {
        let cases = [
            ("", "empty"),
            ("1abc", "start with a lowercase letter"),
            ("-abc", "start with a lowercase letter"),
            ("Abc", "start with a lowercase letter"),
            ("abC", "uppercase"),
            ("a.b", "'.'"),
            ("a/b", "'/'"),
            ("a@b", "'@'"),
            ("a b", "whitespace"),
            ("a\tb", "whitespace"),
            ("ü", "start with a lowercase letter"),
            ("aü", "other than"),
            ("a;rm", "other than"),
        ];
        for (name, reason) in cases {
            let error = TemplateName::parse(name).unwrap_err().to_string();
            assert!(error.contains(reason), "{name:?}: {error}");
            assert!(error.contains(&format!("{name:?}")), "{name:?}: {error}");
        }
        let long = "a".repeat(64);
        assert!(TemplateName::parse(&long).unwrap_err().to_string().contains("longer than 63"));
    }

    #[test]
    fn image_sources_accepted() {
        let digest = format!("sha256:{}", "a".repeat(64));
        let cases = [
            ("oci:quay.io/dougrabson/freebsd14-minimal", "quay.io/dougrabson/freebsd14-minimal"),
            ("oci:127.0.0.1:5000/x:14", "127.0.0.1:5000/x:14"),
            ("oci:localhost/a/b/c:v1.2-rc_3", "localhost/a/b/c:v1.2-rc_3"),
            ("oci:[::1]:5000/img", "[::1]:5000/img"),
            ("oci:reg.example:443/a__b/c--d/e.f", "reg.example:443/a__b/c--d/e.f"),
        ];
        for (source, reference) in cases {
            let image = ImageRef::parse_source(source).unwrap_or_else(|e| panic!("{source}: {e}"));
            assert_eq!(image.to_string(), reference);
            assert_eq!(image.source(), source);
        }

        let with_digest = format!("oci:127.0.0.1:5000/x@{digest}");
        assert_eq!(ImageRef::parse_source(&with_digest).unwrap().to_string(), &with_digest[4..]);
        let both = format!("oci:127.0.0.1:5000/x:14@{digest}");
        let image = ImageRef::parse_source(&both).unwrap();
        assert_eq!(image.transport_ref(), format!("docker://127.0.0.1:5000/x:14@{digest}"));
        assert_eq!(image.domain(), "127.0.0.1:5000");
    }

    #[test]
    fn image_sources_rejected_with_reason() {
        let cases = [
            ("quay.io/a/b", "does not start with \"oci:\""),
            ("docker://quay.io/a/b", "does not start with \"oci:\""),
            ("oci:", "empty"),
            ("oci:ubuntu", "registry host is missing"),
            ("oci:127.0.0.1:5000", "repository path after the registry host"),
            ("oci:library/ubuntu:22.04", "is not a registry host"),
            ("oci:docker://quay.io/a", "transport"),
            ("oci:quay.io/A/b", "path component \"A\""),
            ("oci:quay.io/a//b", "path component \"\""),
            ("oci:quay.io/a-/b", "path component \"a-\""),
            ("oci:quay.io/a/b:", "tag \"\""),
            ("oci:quay.io/a/b:-x", "tag \"-x\""),
            ("oci:quay.io/a/b@sha256:abc", "digest"),
            ("oci:quay.io/a/b@md5", "digest"),
            ("oci:quay.io:99999/a", "port"),
            ("oci:-bad.io/a", "invalid label"),
            ("oci:[zz]:5000/a", "IPv6"),
            ("oci:quay.io/a b", "path component"),
            ("oci:quay.io/a;rm -rf/b", "path component"),
        ];
        for (source, reason) in cases {
            let error = ImageRef::parse_source(source).unwrap_err().to_string();
            assert!(error.contains(reason), "{source:?}: {error}");
            assert!(error.contains(&format!("{source:?}")), "{source:?}: {error}");
        }
        let upper_digest = format!("oci:quay.io/a/b@sha256:{}", "A".repeat(64));
        assert!(ImageRef::parse_source(&upper_digest).unwrap_err().to_string().contains("lowercase hex"));
    }

    #[test]
    fn datasets_accepted_and_rejected() {
        for value in ["zroot/jails", "coppice", "tank/a.b/c-d_e:f"] {
            assert!(Dataset::parse(value).is_ok(), "{value}");
        }
        for (value, reason) in [
            ("", "empty"),
            ("/zroot/jails", "starts or ends"),
            ("zroot/jails/", "starts or ends"),
            ("zroot//jails", "empty component"),
            ("zroot/../x", "'..'"),
            ("zroot@snap", "'@'"),
            ("zroot/j#1", "'@'"),
        ] {
            let error = Dataset::parse(value).unwrap_err().to_string();
            assert!(error.contains(reason), "{value:?}: {error}");
        }
    }

    #[test]
    fn template_dataset_is_derived() {
        let jails = Dataset::parse("zroot/jails").unwrap();
        let name = TemplateName::parse("fbsd14-min").unwrap();

        let dataset = jails.template(&name).unwrap();

        assert_eq!(dataset.as_str(), "zroot/jails/fbsd14-min-template");
        assert_eq!(dataset.snapshot("base"), "zroot/jails/fbsd14-min-template@base");
    }
}
