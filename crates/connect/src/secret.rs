//! Secrets in configuration are references, never literals: `${env:NAME}` reads an environment
//! variable and `${file:/path}` reads a file (one trailing newline dropped), both resolved once at
//! start. A resolved [`Secret`] has no `Display`, and its `Debug` prints `Secret(***)`, so it
//! cannot reach a log line, an API response or the dashboard by formatting.
//!
//! Limits: a secret file is at most [`SECRET_BYTES_MAX`] bytes.

use std::fmt;

/// Largest secret read from a file or the environment.
pub const SECRET_BYTES_MAX: usize = 64 * 1024;

/// A resolved secret value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The value, for the one place that signs or authenticates with it.
    #[must_use]
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Why a secret reference did not resolve. The messages name the reference, never a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    /// A literal where a reference belongs.
    #[error("secrets must be references like ${{env:NAME}} or ${{file:/path}}, not literal values")]
    NotAReference,
    /// An unknown reference kind.
    #[error("unknown secret reference kind {kind:?} (use env or file)")]
    UnknownKind {
        /// What was written before the colon.
        kind: String,
    },
    /// The environment variable is not set (or not UTF-8).
    #[error("environment variable {name} is not set")]
    EnvMissing {
        /// The variable.
        name: String,
    },
    /// The file could not be read.
    #[error("secret file {path}: {reason}")]
    File {
        /// The path.
        path: String,
        /// Why (an I/O error kind, or the size limit).
        reason: String,
    },
    /// The value is empty.
    #[error("secret {reference} is empty")]
    Empty {
        /// The reference.
        reference: String,
    },
}

/// A secret as written in the config: a reference, resolved at start with
/// [`SecretRef::resolve`]. Deserializing refuses literals, so a secret typed into the file is a
/// validation error naming its path, not a working config.
#[derive(Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(try_from = "String")]
pub struct SecretRef(String);

impl TryFrom<String> for SecretRef {
    type Error = SecretError;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        parse(&text)?;
        Ok(SecretRef(text))
    }
}

impl SecretRef {
    /// The reference text (`${env:NAME}`), which is safe to show.
    #[must_use]
    pub fn reference(&self) -> &str {
        &self.0
    }

    /// Resolves it.
    ///
    /// # Errors
    /// [`SecretError`].
    pub fn resolve(&self) -> Result<Secret, SecretError> {
        resolve(&self.0)
    }
}

impl fmt::Debug for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretRef({})", self.0)
    }
}

/// Whether `text` has the shape of a secret reference (used by config validation to reject
/// literals without resolving anything).
#[must_use]
pub fn is_reference(text: &str) -> bool {
    parse(text).is_ok()
}

fn parse(text: &str) -> Result<(&str, &str), SecretError> {
    let inner = text
        .strip_prefix("${")
        .and_then(|t| t.strip_suffix('}'))
        .ok_or(SecretError::NotAReference)?;
    let (kind, arg) = inner.split_once(':').ok_or(SecretError::NotAReference)?;
    if arg.is_empty() {
        return Err(SecretError::NotAReference);
    }
    match kind {
        "env" | "file" => Ok((kind, arg)),
        other => Err(SecretError::UnknownKind { kind: other.into() }),
    }
}

/// Resolves a reference.
///
/// # Errors
/// [`SecretError`], naming the reference (never the value).
pub fn resolve(reference: &str) -> Result<Secret, SecretError> {
    let (kind, arg) = parse(reference)?;
    let value = match kind {
        "env" => std::env::var(arg).map_err(|_| SecretError::EnvMissing { name: arg.into() })?,
        _ => read_file(arg)?,
    };
    if value.len() > SECRET_BYTES_MAX {
        return Err(SecretError::File {
            path: arg.into(),
            reason: format!("longer than {SECRET_BYTES_MAX} bytes"),
        });
    }
    if value.is_empty() {
        return Err(SecretError::Empty {
            reference: reference.into(),
        });
    }
    Ok(Secret(value))
}

fn read_file(path: &str) -> Result<String, SecretError> {
    let fail = |reason: String| SecretError::File {
        path: path.into(),
        reason,
    };
    let len = std::fs::metadata(path)
        .map_err(|e| fail(e.kind().to_string()))?
        .len();
    if len > SECRET_BYTES_MAX as u64 {
        return Err(fail(format!("longer than {SECRET_BYTES_MAX} bytes")));
    }
    let mut text = std::fs::read_to_string(path).map_err(|e| fail(e.kind().to_string()))?;
    if text.ends_with('\n') {
        text.pop();
        if text.ends_with('\r') {
            text.pop();
        }
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_resolve_and_literals_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        std::fs::write(&path, "from-file\n").unwrap();
        let file_ref = format!("${{file:{}}}", path.display());
        assert_eq!(resolve(&file_ref).unwrap().expose(), "from-file");
        assert_eq!(resolve("literal"), Err(SecretError::NotAReference));
        assert_eq!(resolve("${env:}"), Err(SecretError::NotAReference));
        assert_eq!(
            resolve("${vault:x}"),
            Err(SecretError::UnknownKind {
                kind: "vault".into()
            })
        );
        assert_eq!(
            resolve("${env:GEARBOX_TEST_SURELY_UNSET_9}"),
            Err(SecretError::EnvMissing {
                name: "GEARBOX_TEST_SURELY_UNSET_9".into()
            })
        );
        // PATH is set in every test environment.
        assert!(resolve("${env:PATH}").is_ok());
        assert!(matches!(
            resolve("${file:/nonexistent/gearbox}"),
            Err(SecretError::File { .. })
        ));
    }

    #[test]
    fn a_secret_never_formats_its_value() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        std::fs::write(&path, "hunter2-very-secret").unwrap();
        let s = resolve(&format!("${{file:{}}}", path.display())).unwrap();
        assert_eq!(format!("{s:?}"), "Secret(***)");
        assert!(!format!("{:?}", Some(&s)).contains("hunter2"));
    }

    #[test]
    fn a_literal_does_not_deserialize_as_a_secret_ref() {
        let err = serde_json::from_str::<SecretRef>("\"hunter2\"").unwrap_err();
        assert!(err.to_string().contains("references"), "{err}");
        assert!(!err.to_string().contains("hunter2"), "{err}");
        let ok: SecretRef = serde_json::from_str("\"${env:X}\"").unwrap();
        assert_eq!(ok.reference(), "${env:X}");
    }

    #[test]
    fn an_oversized_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big");
        std::fs::write(&path, vec![b'a'; SECRET_BYTES_MAX + 1]).unwrap();
        assert!(matches!(
            resolve(&format!("${{file:{}}}", path.display())),
            Err(SecretError::File { .. })
        ));
    }
}
