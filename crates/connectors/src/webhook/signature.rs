//! Webhook signatures: verifying deliveries signed with a shared secret, and signing outgoing
//! ones in the Standard Webhooks scheme.
//!
//! Three schemes are supported, each an HMAC-SHA256 over a scheme-specific content:
//!
//! | Scheme     | Signature header                       | Signed content     | Delivery id  |
//! | ---------- | -------------------------------------- | ------------------ | ------------ |
//! | `standard` | `webhook-signature: v1,<b64> ...`      | `{id}.{ts}.{body}` | `webhook-id` |
//! | `stripe`   | `Stripe-Signature: t=<s>,v1=<hex>,...` | `{t}.{body}`       | body's `id`  |
//! | `github`   | `X-Hub-Signature-256: sha256=<hex>`    | `{body}`           | header (1)   |
//!
//! (1) `X-GitHub-Delivery`. `{ts}` is the `webhook-timestamp` header, as sent.
//!
//! Invariants:
//! * A delivery is authentic when ANY (configured secret, presented signature) pair matches,
//!   which is what key rotation needs on both sides. Every pair is compared, in constant time,
//!   and the results are OR-ed, so timing reveals neither which secret matched nor how much of a
//!   forged signature was right.
//! * A timestamp outside the replay window (too old or too far in the future) rejects the
//!   delivery even when its signature is valid. The window is checked only once the signature
//!   is known to be valid, so [`SignatureError::StaleTimestamp`] always means "genuine sender,
//!   but a replay or a skewed clock", never a forgery.
//! * GitHub signs no timestamp, so no replay window applies to it; replays are caught by
//!   deduplicating on the `X-GitHub-Delivery` id, which is therefore required.
//! * Secret material and the expected signature appear in no error and no `Debug` output:
//!   [`Verifier`]'s `Debug` prints a count of secrets, and error reasons are fixed texts that
//!   never echo a header value.
//!
//! Limits: at most [`SECRETS_MAX`] secrets per verifier, [`SIGNATURES_PER_HEADER_MAX`] entries
//! per signature header, and [`SIGNATURE_HEADER_BYTES_MAX`] bytes per header value read. So one
//! verification computes at most `SECRETS_MAX` HMACs over the body and
//! `SECRETS_MAX * SIGNATURES_PER_HEADER_MAX` comparisons. The body size is bounded by the HTTP
//! layer, not here.

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use base64::alphabet;
use base64::engine::DecodePaddingMode;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use hmac::{Hmac, Mac};
use http::HeaderMap;
use sha2::Sha256;
use subtle::{Choice, ConstantTimeEq};

/// The default replay window: a timestamp more than this far from now, either way, is stale.
pub const REPLAY_WINDOW_MS_DEFAULT: u64 = 300_000;
/// Secrets a verifier accepts at once, so that rotation can overlap old and new secrets.
pub const SECRETS_MAX: usize = 8;
/// Entries in one signature header; more is [`SignatureError::TooManySignatures`].
pub const SIGNATURES_PER_HEADER_MAX: usize = 16;
/// Bytes in any header value this module reads; longer is [`SignatureError::MalformedHeader`].
pub const SIGNATURE_HEADER_BYTES_MAX: usize = 4096;

/// Standard Webhooks: the delivery id.
pub const HEADER_WEBHOOK_ID: &str = "webhook-id";
/// Standard Webhooks: the signed Unix timestamp in seconds.
pub const HEADER_WEBHOOK_TIMESTAMP: &str = "webhook-timestamp";
/// Standard Webhooks: space-separated `v1,<base64>` signatures.
pub const HEADER_WEBHOOK_SIGNATURE: &str = "webhook-signature";
/// Stripe: `t=<seconds>,v1=<hex>,...`.
pub const HEADER_STRIPE_SIGNATURE: &str = "stripe-signature";
/// GitHub: `sha256=<hex>`.
pub const HEADER_GITHUB_SIGNATURE: &str = "x-hub-signature-256";
/// GitHub: the delivery id (a GUID), required because it is the only replay defence.
pub const HEADER_GITHUB_DELIVERY: &str = "x-github-delivery";

/// The prefix Standard Webhooks puts before a base64 secret.
pub const STANDARD_SECRET_PREFIX: &str = "whsec_";

/// Bytes in an HMAC-SHA256 tag; a presented signature of any other length is malformed.
const SHA256_BYTES: usize = 32;

type HmacSha256 = Hmac<Sha256>;

/// Secrets are typed in by people and copied between tools that disagree on padding, so their
/// padding is optional. Signatures are machine-made and must be canonical.
const SECRET_BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// How a sender signs its deliveries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// Standard Webhooks (<https://www.standardwebhooks.com>), as sent by Svix and others.
    Standard,
    /// Stripe's `Stripe-Signature` header.
    Stripe,
    /// GitHub's `X-Hub-Signature-256` header.
    Github,
}

impl Scheme {
    /// Every scheme, in the order of its configuration names.
    pub const ALL: [Scheme; 3] = [Scheme::Standard, Scheme::Stripe, Scheme::Github];

    /// The scheme configured as `name` (`standard`, `stripe` or `github`, in any ASCII case).
    #[must_use]
    pub fn parse(name: &str) -> Option<Scheme> {
        Scheme::ALL
            .into_iter()
            .find(|s| s.as_str().eq_ignore_ascii_case(name))
    }

    /// The configuration name.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Standard => "standard",
            Scheme::Stripe => "stripe",
            Scheme::Github => "github",
        }
    }
}

impl fmt::Display for Scheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A configuration named a scheme that does not exist.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown webhook signature scheme {name:?}, expected standard, stripe or github")]
pub struct UnknownScheme {
    /// The name as configured.
    pub name: String,
}

impl FromStr for Scheme {
    type Err = UnknownScheme;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Scheme::parse(s).ok_or_else(|| UnknownScheme { name: s.to_owned() })
    }
}

/// The configured secrets cannot be used. Names the secret by its position, never its text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    /// No secret at all: every delivery would be rejected.
    #[error("no webhook secret is configured")]
    NoSecrets,
    /// More secrets than [`SECRETS_MAX`].
    #[error("{count} webhook secrets are configured, more than the {max} allowed")]
    TooManySecrets {
        /// Secrets configured.
        count: usize,
        /// [`SECRETS_MAX`].
        max: usize,
    },
    /// The secret at `index` (from 0) is empty, or is only the `whsec_` prefix.
    #[error("webhook secret {index} is empty")]
    Empty {
        /// Position in the configured list.
        index: usize,
    },
    /// The Standard Webhooks secret at `index` is not base64 after its `whsec_` prefix.
    #[error("webhook secret {index} is not base64 after its whsec_ prefix")]
    BadBase64 {
        /// Position in the configured list.
        index: usize,
    },
}

/// A delivery failed verification. Names the header involved; never carries a secret, the
/// expected signature, or the text of a header value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// A header the scheme requires is absent.
    #[error("missing header {header}")]
    MissingHeader {
        /// The header's name, lower case.
        header: &'static str,
    },
    /// A header is repeated, too long, not UTF-8, or does not follow its scheme's syntax.
    #[error("malformed header {header}: {reason}")]
    MalformedHeader {
        /// The header's name, lower case.
        header: &'static str,
        /// What is wrong, in a fixed text that does not quote the value.
        reason: String,
    },
    /// A signature header has more than [`SIGNATURES_PER_HEADER_MAX`] entries.
    #[error("header {header} has {count} signature entries, more than the {max} allowed")]
    TooManySignatures {
        /// The header's name, lower case.
        header: &'static str,
        /// Entries in the header.
        count: usize,
        /// [`SIGNATURES_PER_HEADER_MAX`].
        max: usize,
    },
    /// A validly signed timestamp is outside the replay window, in the past or in the future.
    #[error(
        "signed timestamp {timestamp_s} s is more than {window_ms} ms away from now ({now_s} s)"
    )]
    StaleTimestamp {
        /// The signed timestamp, Unix seconds.
        timestamp_s: i64,
        /// The verifier's clock, Unix seconds (rounded down).
        now_s: i64,
        /// The replay window.
        window_ms: u64,
    },
    /// No presented signature matches any configured secret.
    #[error("no signature in header {header} matches a configured secret")]
    NoValidSignature {
        /// The header's name, lower case.
        header: &'static str,
    },
}

/// What a successful verification learned about the delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The delivery id to deduplicate on: Standard `webhook-id`; GitHub `X-GitHub-Delivery`;
    /// Stripe: the top-level "id" of the JSON body (e.g. "evt_..."), None if absent.
    pub delivery_id: Option<String>,
    /// The signed timestamp in Unix seconds (Standard, Stripe), None for GitHub (GitHub signs
    /// no timestamp).
    pub timestamp_s: Option<i64>,
}

/// A parsed `Stripe-Signature` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StripeHeader {
    /// `t`: the signed Unix timestamp in seconds.
    pub timestamp_s: i64,
    /// Every `v1` signature, hex-decoded (32 bytes each), in header order.
    pub signatures: Vec<Vec<u8>>,
}

/// Verifies deliveries for one receiver: one scheme, its secrets, and a replay window.
#[derive(Clone)]
pub struct Verifier {
    scheme: Scheme,
    /// HMAC keys, one per configured secret, in configuration order.
    keys: Vec<Vec<u8>>,
    replay_window_ms: u64,
}

impl fmt::Debug for Verifier {
    // Written by hand so that key bytes can never reach a log line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verifier")
            .field("scheme", &self.scheme)
            .field("secrets", &self.keys.len())
            .field("replay_window_ms", &self.replay_window_ms)
            .finish()
    }
}

impl Verifier {
    /// A verifier for `scheme` accepting a signature made with any of `secrets`.
    ///
    /// `secrets`: raw secret strings as configured. Standard Webhooks secrets are
    /// `whsec_<base64>` (the base64 part decodes to the key bytes; a secret without the prefix
    /// is read as base64 too). Stripe's secret string (`whsec_...`) and GitHub's are used byte
    /// for byte as the HMAC key. `replay_window_ms` applies to Standard and Stripe only.
    ///
    /// # Errors
    ///
    /// [`SecretError::NoSecrets`] or [`SecretError::TooManySecrets`] when the count is not in
    /// `1..=SECRETS_MAX`; [`SecretError::Empty`] for an empty secret (or a bare `whsec_`);
    /// [`SecretError::BadBase64`] for a Standard secret that does not decode.
    pub fn new(
        scheme: Scheme,
        secrets: &[String],
        replay_window_ms: u64,
    ) -> Result<Verifier, SecretError> {
        if secrets.is_empty() {
            return Err(SecretError::NoSecrets);
        }
        if secrets.len() > SECRETS_MAX {
            return Err(SecretError::TooManySecrets {
                count: secrets.len(),
                max: SECRETS_MAX,
            });
        }
        let keys = secrets
            .iter()
            .enumerate()
            .map(|(index, secret)| match scheme {
                Scheme::Standard => standard_key_at(index, secret),
                Scheme::Stripe | Scheme::Github if secret.is_empty() => {
                    Err(SecretError::Empty { index })
                }
                Scheme::Stripe | Scheme::Github => Ok(secret.as_bytes().to_vec()),
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Verifier {
            scheme,
            keys,
            replay_window_ms,
        })
    }

    /// The scheme this verifier checks.
    #[must_use]
    pub fn scheme(&self) -> Scheme {
        self.scheme
    }

    /// The replay window, in milliseconds either side of now.
    #[must_use]
    pub fn replay_window_ms(&self) -> u64 {
        self.replay_window_ms
    }

    /// Verifies a delivery. `now_ms` is the current Unix time in milliseconds (injected for
    /// tests).
    ///
    /// Headers are looked up case-insensitively; each one read must appear once, be UTF-8 and
    /// be at most [`SIGNATURE_HEADER_BYTES_MAX`] bytes long.
    ///
    /// # Errors
    ///
    /// [`SignatureError::MissingHeader`] when a required header is absent (for GitHub that
    /// includes `X-GitHub-Delivery`); [`SignatureError::MalformedHeader`] or
    /// [`SignatureError::TooManySignatures`] when one cannot be used;
    /// [`SignatureError::NoValidSignature`] when no signature matches; and, only for an
    /// authentic delivery, [`SignatureError::StaleTimestamp`] when its timestamp is outside the
    /// replay window.
    pub fn verify(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        now_ms: i64,
    ) -> Result<Verified, SignatureError> {
        match self.scheme {
            Scheme::Standard => self.verify_standard(headers, body, now_ms),
            Scheme::Stripe => self.verify_stripe(headers, body, now_ms),
            Scheme::Github => self.verify_github(headers, body),
        }
    }

    fn verify_standard(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        now_ms: i64,
    ) -> Result<Verified, SignatureError> {
        let id = header_str(headers, HEADER_WEBHOOK_ID)?;
        require_non_empty(id, HEADER_WEBHOOK_ID)?;
        let timestamp = header_str(headers, HEADER_WEBHOOK_TIMESTAMP)?;
        let timestamp_s = parse_timestamp_s(timestamp, HEADER_WEBHOOK_TIMESTAMP)?;
        let signatures = parse_standard_signatures(header_str(headers, HEADER_WEBHOOK_SIGNATURE)?)?;
        // The id is signed as sent. The spec asks senders to keep '.' out of ids; a receiver
        // that rejected dotted ids would break interoperability with the reference libraries,
        // which accept them, and the timestamp being digits-only limits the ambiguity to bodies
        // that start with "<digits>.".
        let content = [id.as_bytes(), b".", timestamp.as_bytes(), b".", body];
        if !self.any_match(&content, &signatures) {
            return Err(SignatureError::NoValidSignature {
                header: HEADER_WEBHOOK_SIGNATURE,
            });
        }
        check_window(timestamp_s, now_ms, self.replay_window_ms)?;
        Ok(Verified {
            delivery_id: Some(id.to_owned()),
            timestamp_s: Some(timestamp_s),
        })
    }

    fn verify_stripe(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        now_ms: i64,
    ) -> Result<Verified, SignatureError> {
        let parsed = parse_stripe_header(header_str(headers, HEADER_STRIPE_SIGNATURE)?)?;
        // `t` is canonical decimal (checked by the parser), so formatting it again gives back
        // exactly the bytes the sender signed.
        let t = parsed.timestamp_s.to_string();
        let content = [t.as_bytes(), b".", body];
        if !self.any_match(&content, &parsed.signatures) {
            return Err(SignatureError::NoValidSignature {
                header: HEADER_STRIPE_SIGNATURE,
            });
        }
        check_window(parsed.timestamp_s, now_ms, self.replay_window_ms)?;
        Ok(Verified {
            delivery_id: stripe_event_id(body),
            timestamp_s: Some(parsed.timestamp_s),
        })
    }

    fn verify_github(&self, headers: &HeaderMap, body: &[u8]) -> Result<Verified, SignatureError> {
        let signature = parse_github_header(header_str(headers, HEADER_GITHUB_SIGNATURE)?)?;
        // Required before any HMAC is computed: without it a replay could not be deduplicated,
        // and GitHub signs no timestamp that could bound one instead.
        let delivery = header_str(headers, HEADER_GITHUB_DELIVERY)?;
        require_non_empty(delivery, HEADER_GITHUB_DELIVERY)?;
        if !self.any_match(&[body], std::slice::from_ref(&signature)) {
            return Err(SignatureError::NoValidSignature {
                header: HEADER_GITHUB_SIGNATURE,
            });
        }
        Ok(Verified {
            delivery_id: Some(delivery.to_owned()),
            timestamp_s: None,
        })
    }

    /// Whether any (key, signature) pair matches `content` (the concatenation of its parts).
    /// Every pair is compared in constant time and the results OR-ed, with no early exit.
    fn any_match(&self, content: &[&[u8]], signatures: &[Vec<u8>]) -> bool {
        let mut matched = Choice::from(0);
        for key in &self.keys {
            let tag = hmac_sha256(key, content);
            for signature in signatures {
                matched |= tag.as_slice().ct_eq(signature);
            }
        }
        matched.into()
    }
}

/// Standard Webhooks signing, for the HTTP delivery sink: returns the `webhook-signature`
/// header value `v1,<base64>` for a delivery with id `id`, sent at `timestamp_s`.
///
/// The receiver reads the timestamp as digits only, so `timestamp_s` must not be negative; the
/// spec also asks that `id` contain no `.`.
#[must_use]
pub fn sign_standard(key: &[u8], id: &str, timestamp_s: i64, body: &[u8]) -> String {
    let t = timestamp_s.to_string();
    let tag = hmac_sha256(key, &[id.as_bytes(), b".", t.as_bytes(), b".", body]);
    format!("v1,{}", STANDARD.encode(tag))
}

/// Stripe-style signing, for tests and test senders: returns the `Stripe-Signature` header
/// value `t=<timestamp_s>,v1=<hex>`.
#[must_use]
pub fn sign_stripe(key: &[u8], timestamp_s: i64, body: &[u8]) -> String {
    let t = timestamp_s.to_string();
    let tag = hmac_sha256(key, &[t.as_bytes(), b".", body]);
    format!("t={t},v1={}", to_hex(&tag))
}

/// GitHub-style signing, for tests and test senders: returns the `X-Hub-Signature-256` header
/// value `sha256=<hex>`.
#[must_use]
pub fn sign_github(key: &[u8], body: &[u8]) -> String {
    format!("sha256={}", to_hex(&hmac_sha256(key, &[body])))
}

/// Decodes a Standard Webhooks secret (`whsec_<base64>` or bare base64) to key bytes.
///
/// # Errors
///
/// [`SecretError::Empty`] when nothing follows the prefix, [`SecretError::BadBase64`] when it
/// does not decode; both with `index` 0.
pub fn standard_secret_key(secret: &str) -> Result<Vec<u8>, SecretError> {
    standard_key_at(0, secret)
}

fn standard_key_at(index: usize, secret: &str) -> Result<Vec<u8>, SecretError> {
    let encoded = secret
        .strip_prefix(STANDARD_SECRET_PREFIX)
        .unwrap_or(secret);
    if encoded.is_empty() {
        return Err(SecretError::Empty { index });
    }
    let key = SECRET_BASE64
        .decode(encoded)
        .map_err(|_| SecretError::BadBase64 { index })?;
    if key.is_empty() {
        return Err(SecretError::Empty { index });
    }
    Ok(key)
}

/// Parses a `webhook-signature` value: space-separated `<version>,<signature>` entries, of
/// which only `v1` (HMAC-SHA256, base64) entries are kept, decoded, in header order. Other
/// versions are skipped: `v1a` is the asymmetric (ed25519) scheme, which this module does not
/// verify, and later versions must not break receivers that predate them.
///
/// # Errors
///
/// [`SignatureError::TooManySignatures`] for more than [`SIGNATURES_PER_HEADER_MAX`] entries
/// (of any version); [`SignatureError::MalformedHeader`] for a value that is too long or has
/// no entries, an entry without a comma or with an empty part, or a `v1` signature that is not
/// base64 of 32 bytes.
pub fn parse_standard_signatures(value: &str) -> Result<Vec<Vec<u8>>, SignatureError> {
    let header = HEADER_WEBHOOK_SIGNATURE;
    check_len(value, header)?;
    let entries = || value.split(' ').filter(|entry| !entry.is_empty());
    let count = entries().count();
    if count == 0 {
        return Err(malformed(header, "no signature entries"));
    }
    check_count(count, header)?;
    let mut signatures = Vec::with_capacity(count);
    for entry in entries() {
        let Some((version, encoded)) = entry.split_once(',') else {
            return Err(malformed(header, "an entry is not <version>,<signature>"));
        };
        if version.is_empty() || encoded.is_empty() {
            return Err(malformed(
                header,
                "an entry has an empty version or signature",
            ));
        }
        if version != "v1" {
            continue;
        }
        let signature = STANDARD
            .decode(encoded)
            .map_err(|_| malformed(header, "a v1 signature is not base64"))?;
        if signature.len() != SHA256_BYTES {
            return Err(malformed(header, "a v1 signature is not 32 bytes"));
        }
        signatures.push(signature);
    }
    Ok(signatures)
}

/// Parses a `Stripe-Signature` value: comma-separated `key=value` items, exactly one `t` (Unix
/// seconds, canonical decimal) and any number of `v1` (hex HMAC-SHA256) items. Other keys,
/// such as `v0` (Stripe's test-mode signature), are skipped.
///
/// # Errors
///
/// [`SignatureError::TooManySignatures`] for more than [`SIGNATURES_PER_HEADER_MAX`] items
/// besides `t`; [`SignatureError::MalformedHeader`] for a value that is too long, an item
/// without `=`, a missing, repeated or non-numeric `t`, or a `v1` that is not 64 hex digits.
pub fn parse_stripe_header(value: &str) -> Result<StripeHeader, SignatureError> {
    let header = HEADER_STRIPE_SIGNATURE;
    check_len(value, header)?;
    let items = || value.split(',').map(str::trim);
    check_count(
        items().filter(|item| !item.starts_with("t=")).count(),
        header,
    )?;
    let mut timestamp_s = None;
    let mut signatures = Vec::new();
    for item in items() {
        let Some((key, text)) = item.split_once('=') else {
            return Err(malformed(header, "an item is not key=value"));
        };
        match key {
            "t" if timestamp_s.is_some() => {
                return Err(malformed(header, "the timestamp t is repeated"));
            }
            "t" => timestamp_s = Some(parse_timestamp_s(text, header)?),
            "v1" => signatures.push(decode_hex_sha256(text, header)?),
            _ => {}
        }
    }
    let Some(timestamp_s) = timestamp_s else {
        return Err(malformed(header, "no timestamp t"));
    };
    Ok(StripeHeader {
        timestamp_s,
        signatures,
    })
}

/// Parses an `X-Hub-Signature-256` value, `sha256=<64 hex digits>`, to the 32 signature bytes.
/// GitHub sends exactly one signature, so a list is malformed.
///
/// # Errors
///
/// [`SignatureError::MalformedHeader`] for a value that is too long, lacks the `sha256=`
/// prefix, or whose rest is not 64 hex digits.
pub fn parse_github_header(value: &str) -> Result<Vec<u8>, SignatureError> {
    let header = HEADER_GITHUB_SIGNATURE;
    check_len(value, header)?;
    let Some(hex) = value.strip_prefix("sha256=") else {
        return Err(malformed(header, "the value is not sha256=<hex>"));
    };
    decode_hex_sha256(hex, header)
}

/// The one value of header `name`, as UTF-8 text of bounded length.
fn header_str<'h>(headers: &'h HeaderMap, name: &'static str) -> Result<&'h str, SignatureError> {
    let mut values = headers.get_all(name).iter();
    let Some(value) = values.next() else {
        return Err(SignatureError::MissingHeader { header: name });
    };
    // A repeated header is ambiguous (which one did the sender sign?), so neither is used.
    if values.next().is_some() {
        return Err(malformed(name, "the header is repeated"));
    }
    let bytes = value.as_bytes();
    if bytes.len() > SIGNATURE_HEADER_BYTES_MAX {
        return Err(too_long(name));
    }
    std::str::from_utf8(bytes).map_err(|_| malformed(name, "the value is not UTF-8"))
}

fn require_non_empty(value: &str, header: &'static str) -> Result<(), SignatureError> {
    if value.is_empty() {
        return Err(malformed(header, "the value is empty"));
    }
    Ok(())
}

fn check_len(value: &str, header: &'static str) -> Result<(), SignatureError> {
    if value.len() > SIGNATURE_HEADER_BYTES_MAX {
        return Err(too_long(header));
    }
    Ok(())
}

fn check_count(count: usize, header: &'static str) -> Result<(), SignatureError> {
    if count > SIGNATURES_PER_HEADER_MAX {
        return Err(SignatureError::TooManySignatures {
            header,
            count,
            max: SIGNATURES_PER_HEADER_MAX,
        });
    }
    Ok(())
}

/// Unix seconds written as canonical decimal: digits only, no sign, no leading zero. Being
/// canonical lets the signed text be rebuilt from the number.
fn parse_timestamp_s(text: &str, header: &'static str) -> Result<i64, SignatureError> {
    let digits = !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit());
    if !digits || (text.len() > 1 && text.starts_with('0')) {
        return Err(malformed(
            header,
            "the timestamp is not a canonical decimal number of seconds",
        ));
    }
    text.parse()
        .map_err(|_| malformed(header, "the timestamp is out of range"))
}

/// Whether `timestamp_s` is within `window_ms` of `now_ms`, either way. Computed in `i128` so
/// that no clock value, however absurd, can overflow.
fn check_window(timestamp_s: i64, now_ms: i64, window_ms: u64) -> Result<(), SignatureError> {
    let skew_ms = i128::from(now_ms) - i128::from(timestamp_s) * 1000;
    if skew_ms.unsigned_abs() > u128::from(window_ms) {
        return Err(SignatureError::StaleTimestamp {
            timestamp_s,
            now_s: now_ms.div_euclid(1000),
            window_ms,
        });
    }
    Ok(())
}

/// The top-level string `id` of a Stripe event body, if the body is a JSON object with one.
/// Only called on authenticated bodies, so no unauthenticated JSON is ever parsed.
fn stripe_event_id(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Event {
        id: Option<String>,
    }
    serde_json::from_slice::<Event>(body).ok()?.id
}

fn hmac_sha256(key: &[u8], content: &[&[u8]]) -> [u8; SHA256_BYTES] {
    // HMAC accepts keys of every length (longer ones are hashed first): this cannot fail.
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC accepts keys of any length");
    for part in content {
        mac.update(part);
    }
    let mut tag = [0; SHA256_BYTES];
    tag.copy_from_slice(&mac.finalize().into_bytes());
    tag
}

fn decode_hex_sha256(hex: &str, header: &'static str) -> Result<Vec<u8>, SignatureError> {
    let invalid = || malformed(header, "a signature is not 64 hex digits");
    if hex.len() != SHA256_BYTES * 2 {
        return Err(invalid());
    }
    hex.as_bytes()
        .chunks_exact(2)
        .map(|pair| Some((hex_digit(pair[0])? << 4) | hex_digit(pair[1])?))
        .collect::<Option<Vec<u8>>>()
        .ok_or_else(invalid)
}

fn hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    bytes
        .iter()
        .flat_map(|b| [DIGITS[usize::from(b >> 4)], DIGITS[usize::from(b & 0xf)]])
        .map(char::from)
        .collect()
}

fn malformed(header: &'static str, reason: &str) -> SignatureError {
    SignatureError::MalformedHeader {
        header,
        reason: reason.to_owned(),
    }
}

fn too_long(header: &'static str) -> SignatureError {
    SignatureError::MalformedHeader {
        header,
        reason: format!("the value is longer than {SIGNATURE_HEADER_BYTES_MAX} bytes"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderName, HeaderValue};

    // Standard Webhooks: the example published in the Svix/Standard Webhooks libraries' READMEs,
    // recomputed independently of this module with:
    //   python3 -c "import hmac, hashlib, base64
    //   k = base64.b64decode('MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw')
    //   m = b'msg_p5jXN8AQM9LWM0D4loKWxJek.1614265330.{\"test\": 2432232314}'
    //   print(base64.b64encode(hmac.new(k, m, hashlib.sha256).digest()).decode())"
    const SVIX_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const SVIX_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const SVIX_TS: i64 = 1_614_265_330;
    const SVIX_BODY: &[u8] = br#"{"test": 2432232314}"#;
    const SVIX_SIG: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    // Stripe: computed independently of this module with
    //   printf '%s' '1700000000.{"id":"evt_1NG8Du2eZvKYlo2CUI79vXWy","object":"event"}' \
    //     | openssl dgst -sha256 -hmac 'whsec_gearbox_stripe_test'
    // (and the same digest from python3's hmac module).
    const STRIPE_SECRET: &str = "whsec_gearbox_stripe_test";
    const STRIPE_TS: i64 = 1_700_000_000;
    const STRIPE_BODY: &[u8] = br#"{"id":"evt_1NG8Du2eZvKYlo2CUI79vXWy","object":"event"}"#;
    const STRIPE_EVENT_ID: &str = "evt_1NG8Du2eZvKYlo2CUI79vXWy";
    const STRIPE_SIG_HEX: &str = "436d921cf6348bb290773e3a62f52185fb86400d3b9632911eaacbe7e17540d4";

    // GitHub: the example from GitHub's "Validating webhook deliveries" docs, recomputed with
    //   printf '%s' 'Hello, World!' | openssl dgst -sha256 -hmac "It's a Secret to Everybody"
    const GITHUB_SECRET: &str = "It's a Secret to Everybody";
    const GITHUB_BODY: &[u8] = b"Hello, World!";
    const GITHUB_SIG: &str =
        "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
    const GITHUB_DELIVERY: &str = "72d3162e-cc78-11e3-81ab-4c9367dc0958";

    const WINDOW_MS: i64 = REPLAY_WINDOW_MS_DEFAULT as i64;
    const SVIX_NOW_MS: i64 = SVIX_TS * 1000;
    const STRIPE_NOW_MS: i64 = STRIPE_TS * 1000;

    /// Text that must never appear in an error or in `Debug` output: every secret, the base64
    /// part of the Standard one, and every expected signature.
    const SECRET_TEXTS: &[&str] = &[
        SVIX_SECRET,
        "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        "g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
        STRIPE_SECRET,
        STRIPE_SIG_HEX,
        GITHUB_SECRET,
        "757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17",
    ];

    type Headers = Vec<(&'static str, Vec<u8>)>;

    enum Expect {
        Ok(Option<&'static str>, Option<i64>),
        Err(SignatureError),
        /// A `MalformedHeader` for this header whose reason contains this text.
        Malformed(&'static str, &'static str),
    }

    struct Case {
        name: &'static str,
        headers: Headers,
        body: &'static [u8],
        now_ms: i64,
        expect: Expect,
    }

    fn case(
        name: &'static str,
        headers: Headers,
        body: &'static [u8],
        now_ms: i64,
        expect: Expect,
    ) -> Case {
        Case {
            name,
            headers,
            body,
            now_ms,
            expect,
        }
    }

    fn set(mut headers: Headers, name: &'static str, value: impl AsRef<[u8]>) -> Headers {
        headers.retain(|(n, _)| *n != name);
        headers.push((name, value.as_ref().to_vec()));
        headers
    }

    fn unset(mut headers: Headers, name: &'static str) -> Headers {
        headers.retain(|(n, _)| *n != name);
        headers
    }

    fn add(mut headers: Headers, name: &'static str, value: impl AsRef<[u8]>) -> Headers {
        headers.push((name, value.as_ref().to_vec()));
        headers
    }

    fn header_map(headers: &Headers) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.append(
                HeaderName::from_static(name),
                HeaderValue::from_bytes(value).expect("test header values are valid"),
            );
        }
        map
    }

    fn assert_no_secret(text: &str) {
        for secret in SECRET_TEXTS {
            assert!(!text.contains(secret), "{text:?} leaks {secret:?}");
        }
    }

    fn check(verifier: &Verifier, cases: &[Case]) {
        for c in cases {
            let got = verifier.verify(&header_map(&c.headers), c.body, c.now_ms);
            match (&c.expect, &got) {
                (Expect::Ok(id, ts), Ok(v)) => {
                    assert_eq!(v.delivery_id.as_deref(), *id, "case {:?}", c.name);
                    assert_eq!(v.timestamp_s, *ts, "case {:?}", c.name);
                }
                (Expect::Err(want), Err(e)) => assert_eq!(e, want, "case {:?}", c.name),
                (
                    Expect::Malformed(header, reason),
                    Err(SignatureError::MalformedHeader {
                        header: got_header,
                        reason: got_reason,
                    }),
                ) => {
                    assert_eq!(got_header, header, "case {:?}", c.name);
                    assert!(
                        got_reason.contains(reason),
                        "case {:?}: reason {got_reason:?} lacks {reason:?}",
                        c.name
                    );
                }
                (_, got) => panic!("case {:?}: unexpected {got:?}", c.name),
            }
            if let Err(e) = &got {
                assert_no_secret(&e.to_string());
                assert_no_secret(&format!("{e:?}"));
            }
        }
    }

    fn no_valid(header: &'static str) -> Expect {
        Expect::Err(SignatureError::NoValidSignature { header })
    }

    fn missing(header: &'static str) -> Expect {
        Expect::Err(SignatureError::MissingHeader { header })
    }

    fn stale(timestamp_s: i64, now_ms: i64) -> Expect {
        Expect::Err(SignatureError::StaleTimestamp {
            timestamp_s,
            now_s: now_ms.div_euclid(1000),
            window_ms: REPLAY_WINDOW_MS_DEFAULT,
        })
    }

    fn too_many(header: &'static str, count: usize) -> Expect {
        Expect::Err(SignatureError::TooManySignatures {
            header,
            count,
            max: SIGNATURES_PER_HEADER_MAX,
        })
    }

    fn verifier(scheme: Scheme, secrets: &[&str]) -> Verifier {
        let secrets: Vec<String> = secrets.iter().map(|s| (*s).to_owned()).collect();
        Verifier::new(scheme, &secrets, REPLAY_WINDOW_MS_DEFAULT).expect("test secrets are valid")
    }

    /// A well-formed v1 entry that no test secret produced.
    fn standard_wrong(n: u8) -> String {
        format!("v1,{}", STANDARD.encode([n; SHA256_BYTES]))
    }

    fn standard_headers() -> Headers {
        vec![
            (HEADER_WEBHOOK_ID, SVIX_ID.into()),
            (HEADER_WEBHOOK_TIMESTAMP, SVIX_TS.to_string().into()),
            (HEADER_WEBHOOK_SIGNATURE, SVIX_SIG.into()),
        ]
    }

    /// `count` signature entries: wrong ones, then the valid one last.
    fn standard_entries(count: usize) -> String {
        let mut entries: Vec<String> = (0..count - 1).map(|i| standard_wrong(i as u8)).collect();
        entries.push(SVIX_SIG.to_owned());
        entries.join(" ")
    }

    #[test]
    fn standard_cases() {
        let sig = HEADER_WEBHOOK_SIGNATURE;
        let ts = HEADER_WEBHOOK_TIMESTAMP;
        let id = HEADER_WEBHOOK_ID;
        let base = standard_headers;
        let valid = || Expect::Ok(Some(SVIX_ID), Some(SVIX_TS));
        let with_sig = |value: String| set(base(), sig, value);
        let now = SVIX_NOW_MS;
        let cases = [
            case("published vector", base(), SVIX_BODY, now, valid()),
            case(
                "one valid among several, with a v1a entry",
                with_sig(format!("{} v1a,c29tZQ== {SVIX_SIG}", standard_wrong(1))),
                SVIX_BODY,
                now,
                valid(),
            ),
            case(
                "valid first, wrong after",
                with_sig(format!("{SVIX_SIG} {}", standard_wrong(1))),
                SVIX_BODY,
                now,
                valid(),
            ),
            case(
                "extra spaces between entries",
                with_sig(format!("  {}   {SVIX_SIG} ", standard_wrong(1))),
                SVIX_BODY,
                now,
                valid(),
            ),
            case(
                "tampered body",
                base(),
                br#"{"test": 2432232315}"#,
                now,
                no_valid(sig),
            ),
            case(
                "tampered id",
                set(base(), id, "msg_other"),
                SVIX_BODY,
                now,
                no_valid(sig),
            ),
            case(
                "tampered timestamp",
                set(base(), ts, (SVIX_TS + 1).to_string()),
                SVIX_BODY,
                now,
                no_valid(sig),
            ),
            case(
                "only wrong signatures",
                with_sig(format!("{} {}", standard_wrong(1), standard_wrong(2))),
                SVIX_BODY,
                now,
                no_valid(sig),
            ),
            case(
                "only v1a entries",
                with_sig("v1a,c29tZQ== v2,c29tZQ==".to_owned()),
                SVIX_BODY,
                now,
                no_valid(sig),
            ),
            case(
                "window edge, past",
                base(),
                SVIX_BODY,
                now + WINDOW_MS,
                valid(),
            ),
            case(
                "stale",
                base(),
                SVIX_BODY,
                now + WINDOW_MS + 1,
                stale(SVIX_TS, now + WINDOW_MS + 1),
            ),
            case(
                "window edge, future",
                base(),
                SVIX_BODY,
                now - WINDOW_MS,
                valid(),
            ),
            case(
                "future",
                base(),
                SVIX_BODY,
                now - WINDOW_MS - 1,
                stale(SVIX_TS, now - WINDOW_MS - 1),
            ),
            case(
                "clock at i64::MIN",
                base(),
                SVIX_BODY,
                i64::MIN,
                stale(SVIX_TS, i64::MIN),
            ),
            case(
                "clock at i64::MAX",
                base(),
                SVIX_BODY,
                i64::MAX,
                stale(SVIX_TS, i64::MAX),
            ),
            case(
                "stale and forged: the forgery is reported",
                with_sig(standard_wrong(1)),
                SVIX_BODY,
                now + WINDOW_MS + 1,
                no_valid(sig),
            ),
            case("missing id", unset(base(), id), SVIX_BODY, now, missing(id)),
            case(
                "missing timestamp",
                unset(base(), ts),
                SVIX_BODY,
                now,
                missing(ts),
            ),
            case(
                "missing signature",
                unset(base(), sig),
                SVIX_BODY,
                now,
                missing(sig),
            ),
            case(
                "empty id",
                set(base(), id, ""),
                SVIX_BODY,
                now,
                Expect::Malformed(id, "empty"),
            ),
            case(
                "id not UTF-8",
                set(base(), id, b"msg_\xff"),
                SVIX_BODY,
                now,
                Expect::Malformed(id, "UTF-8"),
            ),
            case(
                "repeated signature header",
                add(base(), sig, SVIX_SIG),
                SVIX_BODY,
                now,
                Expect::Malformed(sig, "repeated"),
            ),
            case(
                "signature header too long",
                with_sig(format!(
                    "{SVIX_SIG} {}",
                    "x".repeat(SIGNATURE_HEADER_BYTES_MAX)
                )),
                SVIX_BODY,
                now,
                Expect::Malformed(sig, "longer than 4096 bytes"),
            ),
            case(
                "id too long",
                set(base(), id, "m".repeat(SIGNATURE_HEADER_BYTES_MAX + 1)),
                SVIX_BODY,
                now,
                Expect::Malformed(id, "longer than"),
            ),
            case(
                "empty signature header",
                with_sig(String::new()),
                SVIX_BODY,
                now,
                Expect::Malformed(sig, "no signature entries"),
            ),
            case(
                "entry without comma",
                with_sig(format!("v1 {SVIX_SIG}")),
                SVIX_BODY,
                now,
                Expect::Malformed(sig, "<version>,<signature>"),
            ),
            case(
                "entry with empty signature",
                with_sig(format!("v1, {SVIX_SIG}")),
                SVIX_BODY,
                now,
                Expect::Malformed(sig, "empty"),
            ),
            case(
                "entry with empty version",
                with_sig(",c29tZQ==".to_owned()),
                SVIX_BODY,
                now,
                Expect::Malformed(sig, "empty"),
            ),
            case(
                "v1 not base64",
                with_sig(format!("v1,not*base64 {SVIX_SIG}")),
                SVIX_BODY,
                now,
                Expect::Malformed(sig, "not base64"),
            ),
            case(
                "v1 not 32 bytes",
                with_sig(format!("v1,AAAA {SVIX_SIG}")),
                SVIX_BODY,
                now,
                Expect::Malformed(sig, "not 32 bytes"),
            ),
            case(
                "exactly SIGNATURES_PER_HEADER_MAX entries",
                with_sig(standard_entries(SIGNATURES_PER_HEADER_MAX)),
                SVIX_BODY,
                now,
                valid(),
            ),
            case(
                "one entry over SIGNATURES_PER_HEADER_MAX",
                with_sig(standard_entries(SIGNATURES_PER_HEADER_MAX + 1)),
                SVIX_BODY,
                now,
                too_many(sig, SIGNATURES_PER_HEADER_MAX + 1),
            ),
            case(
                "entries of other versions count towards the limit",
                with_sig(format!(
                    "{} {SVIX_SIG}",
                    vec!["v1a,c29tZQ=="; SIGNATURES_PER_HEADER_MAX].join(" ")
                )),
                SVIX_BODY,
                now,
                too_many(sig, SIGNATURES_PER_HEADER_MAX + 1),
            ),
        ];
        check(&verifier(Scheme::Standard, &[SVIX_SECRET]), &cases);

        let timestamps: [(&str, &str); 8] = [
            ("", "canonical"),
            ("abc", "canonical"),
            ("-1614265330", "canonical"),
            ("+1614265330", "canonical"),
            ("01614265330", "canonical"),
            ("1614265330.0", "canonical"),
            (" 1614265330", "canonical"),
            ("99999999999999999999", "out of range"),
        ];
        let cases: Vec<Case> = timestamps
            .into_iter()
            .map(|(value, reason)| {
                case(
                    "malformed timestamp",
                    set(base(), ts, value),
                    SVIX_BODY,
                    now,
                    Expect::Malformed(ts, reason),
                )
            })
            .collect();
        check(&verifier(Scheme::Standard, &[SVIX_SECRET]), &cases);
    }

    fn stripe_header(signatures: &[&str]) -> Headers {
        let mut value = format!("t={STRIPE_TS}");
        for s in signatures {
            value.push(',');
            value.push_str(s);
        }
        vec![(HEADER_STRIPE_SIGNATURE, value.into())]
    }

    #[test]
    fn stripe_cases() {
        let sig = HEADER_STRIPE_SIGNATURE;
        let right = format!("v1={STRIPE_SIG_HEX}");
        let wrong = |n: u8| format!("v1={}", to_hex(&[n; SHA256_BYTES]));
        let base = || stripe_header(&[&right]);
        let raw = |value: &str| vec![(sig, value.as_bytes().to_vec())];
        let valid = || Expect::Ok(Some(STRIPE_EVENT_ID), Some(STRIPE_TS));
        let now = STRIPE_NOW_MS;
        let key = STRIPE_SECRET.as_bytes();
        let entries = |count: usize, filler: &str| {
            let mut list = vec![filler.to_owned(); count - 1];
            list.push(right.clone());
            stripe_header(&list.iter().map(String::as_str).collect::<Vec<_>>())
        };
        let cases = [
            case("independent vector", base(), STRIPE_BODY, now, valid()),
            case(
                "v0 and several v1, one valid",
                stripe_header(&[
                    &wrong(1),
                    &right,
                    &wrong(2),
                    &format!("v0={}", "ab".repeat(32)),
                ]),
                STRIPE_BODY,
                now,
                valid(),
            ),
            case(
                "timestamp after the signature",
                raw(&format!("{right},t={STRIPE_TS}")),
                STRIPE_BODY,
                now,
                valid(),
            ),
            case(
                "upper-case hex",
                raw(&format!(
                    "t={STRIPE_TS},v1={}",
                    STRIPE_SIG_HEX.to_uppercase()
                )),
                STRIPE_BODY,
                now,
                valid(),
            ),
            case(
                "spaces after commas",
                raw(&format!("t={STRIPE_TS}, {right}")),
                STRIPE_BODY,
                now,
                valid(),
            ),
            case(
                "body without id",
                raw(&sign_stripe(key, STRIPE_TS, br#"{"object":"event"}"#)),
                br#"{"object":"event"}"#,
                now,
                Expect::Ok(None, Some(STRIPE_TS)),
            ),
            case(
                "body with a numeric id",
                raw(&sign_stripe(key, STRIPE_TS, br#"{"id":7}"#)),
                br#"{"id":7}"#,
                now,
                Expect::Ok(None, Some(STRIPE_TS)),
            ),
            case(
                "body not JSON",
                raw(&sign_stripe(key, STRIPE_TS, b"not json")),
                b"not json",
                now,
                Expect::Ok(None, Some(STRIPE_TS)),
            ),
            case(
                "tampered body",
                base(),
                br#"{"id":"evt_1NG8Du2eZvKYlo2CUI79vXWz","object":"event"}"#,
                now,
                no_valid(sig),
            ),
            case(
                "tampered timestamp",
                raw(&format!("t={},{right}", STRIPE_TS + 1)),
                STRIPE_BODY,
                now,
                no_valid(sig),
            ),
            case(
                "only v0",
                raw(&format!("t={STRIPE_TS},v0={STRIPE_SIG_HEX}")),
                STRIPE_BODY,
                now,
                no_valid(sig),
            ),
            case(
                "only wrong signatures",
                stripe_header(&[&wrong(1), &wrong(2)]),
                STRIPE_BODY,
                now,
                no_valid(sig),
            ),
            case(
                "window edge, past",
                base(),
                STRIPE_BODY,
                now + WINDOW_MS,
                valid(),
            ),
            case(
                "stale",
                base(),
                STRIPE_BODY,
                now + WINDOW_MS + 1,
                stale(STRIPE_TS, now + WINDOW_MS + 1),
            ),
            case(
                "window edge, future",
                base(),
                STRIPE_BODY,
                now - WINDOW_MS,
                valid(),
            ),
            case(
                "future",
                base(),
                STRIPE_BODY,
                now - WINDOW_MS - 1,
                stale(STRIPE_TS, now - WINDOW_MS - 1),
            ),
            case(
                "stale and forged: the forgery is reported",
                stripe_header(&[&wrong(1)]),
                STRIPE_BODY,
                now - WINDOW_MS - 1,
                no_valid(sig),
            ),
            case("missing header", vec![], STRIPE_BODY, now, missing(sig)),
            case(
                "wrong header name",
                vec![("webhook-signature", format!("t={STRIPE_TS},{right}").into())],
                STRIPE_BODY,
                now,
                missing(sig),
            ),
            case(
                "repeated header",
                add(base(), sig, format!("t={STRIPE_TS},{right}")),
                STRIPE_BODY,
                now,
                Expect::Malformed(sig, "repeated"),
            ),
            case(
                "not UTF-8",
                vec![(sig, b"t=1700000000,v1=\xff".to_vec())],
                STRIPE_BODY,
                now,
                Expect::Malformed(sig, "UTF-8"),
            ),
            case(
                "too long",
                raw(&format!("t={STRIPE_TS},{right},x={}", "0".repeat(4096))),
                STRIPE_BODY,
                now,
                Expect::Malformed(sig, "longer than"),
            ),
            case(
                "empty",
                raw(""),
                STRIPE_BODY,
                now,
                Expect::Malformed(sig, "key=value"),
            ),
            case(
                "trailing comma",
                raw(&format!("t={STRIPE_TS},{right},")),
                STRIPE_BODY,
                now,
                Expect::Malformed(sig, "key=value"),
            ),
            case(
                "no timestamp",
                raw(&right),
                STRIPE_BODY,
                now,
                Expect::Malformed(sig, "no timestamp"),
            ),
            case(
                "repeated timestamp",
                raw(&format!("t={STRIPE_TS},t={STRIPE_TS},{right}")),
                STRIPE_BODY,
                now,
                Expect::Malformed(sig, "repeated"),
            ),
            case(
                "timestamp not a number",
                raw(&format!("t=now,{right}")),
                STRIPE_BODY,
                now,
                Expect::Malformed(sig, "canonical"),
            ),
            case(
                "v1 not hex",
                raw(&format!("t={STRIPE_TS},v1={},{right}", "zz".repeat(32))),
                STRIPE_BODY,
                now,
                Expect::Malformed(sig, "64 hex digits"),
            ),
            case(
                "v1 too short",
                raw(&format!("t={STRIPE_TS},v1={}", &STRIPE_SIG_HEX[1..])),
                STRIPE_BODY,
                now,
                Expect::Malformed(sig, "64 hex digits"),
            ),
            case(
                "exactly SIGNATURES_PER_HEADER_MAX entries",
                entries(SIGNATURES_PER_HEADER_MAX, &wrong(1)),
                STRIPE_BODY,
                now,
                valid(),
            ),
            case(
                "one entry over SIGNATURES_PER_HEADER_MAX",
                entries(SIGNATURES_PER_HEADER_MAX + 1, &wrong(1)),
                STRIPE_BODY,
                now,
                too_many(sig, SIGNATURES_PER_HEADER_MAX + 1),
            ),
            case(
                "v0 entries count towards the limit",
                entries(SIGNATURES_PER_HEADER_MAX + 1, "v0=00"),
                STRIPE_BODY,
                now,
                too_many(sig, SIGNATURES_PER_HEADER_MAX + 1),
            ),
        ];
        check(&verifier(Scheme::Stripe, &[STRIPE_SECRET]), &cases);
    }

    #[test]
    fn github_cases() {
        let sig = HEADER_GITHUB_SIGNATURE;
        let delivery = HEADER_GITHUB_DELIVERY;
        let base =
            || -> Headers { vec![(sig, GITHUB_SIG.into()), (delivery, GITHUB_DELIVERY.into())] };
        let with_sig = |value: &str| set(base(), sig, value);
        let valid = || Expect::Ok(Some(GITHUB_DELIVERY), None);
        let hex = &GITHUB_SIG["sha256=".len()..];
        // GitHub signs no timestamp, so any clock reading verifies.
        let now = 0;
        let cases = [
            case("published vector", base(), GITHUB_BODY, now, valid()),
            case(
                "no replay window, early clock",
                base(),
                GITHUB_BODY,
                i64::MIN,
                valid(),
            ),
            case(
                "no replay window, late clock",
                base(),
                GITHUB_BODY,
                i64::MAX,
                valid(),
            ),
            case(
                "upper-case hex",
                with_sig(&format!("sha256={}", hex.to_uppercase())),
                GITHUB_BODY,
                now,
                valid(),
            ),
            case(
                "tampered body",
                base(),
                b"Hello, World?",
                now,
                no_valid(sig),
            ),
            case(
                "wrong signature",
                with_sig(&format!("sha256={}", "00".repeat(32))),
                GITHUB_BODY,
                now,
                no_valid(sig),
            ),
            case(
                "missing signature",
                unset(base(), sig),
                GITHUB_BODY,
                now,
                missing(sig),
            ),
            case(
                "missing delivery id",
                unset(base(), delivery),
                GITHUB_BODY,
                now,
                missing(delivery),
            ),
            case(
                "empty delivery id",
                set(base(), delivery, ""),
                GITHUB_BODY,
                now,
                Expect::Malformed(delivery, "empty"),
            ),
            case(
                "repeated delivery id",
                add(base(), delivery, GITHUB_DELIVERY),
                GITHUB_BODY,
                now,
                Expect::Malformed(delivery, "repeated"),
            ),
            // GitHub sends exactly one signature, so several (a list, or the header twice) are
            // malformed rather than "one valid among several".
            case(
                "several signatures in one header",
                with_sig(&format!("{GITHUB_SIG},{GITHUB_SIG}")),
                GITHUB_BODY,
                now,
                Expect::Malformed(sig, "64 hex digits"),
            ),
            case(
                "signature header repeated",
                add(base(), sig, GITHUB_SIG),
                GITHUB_BODY,
                now,
                Expect::Malformed(sig, "repeated"),
            ),
            case(
                "sha1 signature",
                with_sig("sha1=5d61605c3feea9799210ddcb71307d4ba264225f"),
                GITHUB_BODY,
                now,
                Expect::Malformed(sig, "sha256=<hex>"),
            ),
            case(
                "bare hex",
                with_sig(hex),
                GITHUB_BODY,
                now,
                Expect::Malformed(sig, "sha256=<hex>"),
            ),
            case(
                "not hex",
                with_sig(&format!("sha256={}", "g".repeat(64))),
                GITHUB_BODY,
                now,
                Expect::Malformed(sig, "64 hex digits"),
            ),
            case(
                "empty hex",
                with_sig("sha256="),
                GITHUB_BODY,
                now,
                Expect::Malformed(sig, "64 hex digits"),
            ),
            case(
                "too long",
                with_sig(&format!(
                    "sha256={}",
                    "0".repeat(SIGNATURE_HEADER_BYTES_MAX)
                )),
                GITHUB_BODY,
                now,
                Expect::Malformed(sig, "longer than"),
            ),
            case(
                "not UTF-8",
                set(base(), sig, b"sha256=\xfe"),
                GITHUB_BODY,
                now,
                Expect::Malformed(sig, "UTF-8"),
            ),
        ];
        check(&verifier(Scheme::Github, &[GITHUB_SECRET]), &cases);
    }

    /// The secret that signed `scheme`'s test vector.
    fn right_secret(scheme: Scheme) -> &'static str {
        match scheme {
            Scheme::Standard => SVIX_SECRET,
            Scheme::Stripe => STRIPE_SECRET,
            Scheme::Github => GITHUB_SECRET,
        }
    }

    /// A valid secret for `scheme` that signed nothing.
    fn wrong_secret(scheme: Scheme, n: usize) -> String {
        match scheme {
            Scheme::Standard => format!("whsec_{}", STANDARD.encode(format!("wrong-key-{n}"))),
            Scheme::Stripe => format!("whsec_wrong_{n}"),
            Scheme::Github => format!("wrong secret {n}"),
        }
    }

    /// `scheme`'s test vector as a delivery at a time it is fresh, and what verifying it gives.
    fn vector(scheme: Scheme) -> (Headers, &'static [u8], i64, Expect) {
        match scheme {
            Scheme::Standard => {
                let ok = Expect::Ok(Some(SVIX_ID), Some(SVIX_TS));
                (standard_headers(), SVIX_BODY, SVIX_NOW_MS, ok)
            }
            Scheme::Stripe => {
                let ok = Expect::Ok(Some(STRIPE_EVENT_ID), Some(STRIPE_TS));
                let headers = stripe_header(&[&format!("v1={STRIPE_SIG_HEX}")]);
                (headers, STRIPE_BODY, STRIPE_NOW_MS, ok)
            }
            Scheme::Github => {
                let ok = Expect::Ok(Some(GITHUB_DELIVERY), None);
                let headers = vec![
                    (HEADER_GITHUB_SIGNATURE, GITHUB_SIG.into()),
                    (HEADER_GITHUB_DELIVERY, GITHUB_DELIVERY.into()),
                ];
                (headers, GITHUB_BODY, 0, ok)
            }
        }
    }

    /// Rotation: for each scheme, its valid delivery against secret lists where the right
    /// secret is alone, absent (wrong secret), first, last, or last of `SECRETS_MAX`.
    #[test]
    fn rotation_and_wrong_secrets() {
        for scheme in Scheme::ALL {
            let header = match scheme {
                Scheme::Standard => HEADER_WEBHOOK_SIGNATURE,
                Scheme::Stripe => HEADER_STRIPE_SIGNATURE,
                Scheme::Github => HEADER_GITHUB_SIGNATURE,
            };
            let right = right_secret(scheme);
            let wrongs: Vec<String> = (0..SECRETS_MAX).map(|n| wrong_secret(scheme, n)).collect();
            let wrong = |n: usize| wrongs[n].as_str();
            let mut last_of_max: Vec<&str> = (0..SECRETS_MAX - 1).map(wrong).collect();
            last_of_max.push(right);
            let lists: [(&str, Vec<&str>, bool); 5] = [
                ("right secret alone", vec![right], true),
                ("wrong secrets only", vec![wrong(0), wrong(1)], false),
                ("right secret first", vec![right, wrong(0)], true),
                ("right secret last", vec![wrong(0), wrong(1), right], true),
                ("right secret last of SECRETS_MAX", last_of_max, true),
            ];
            for (name, secrets, matches) in lists {
                let (headers, body, now_ms, ok) = vector(scheme);
                let expect = if matches { ok } else { no_valid(header) };
                check(
                    &verifier(scheme, &secrets),
                    &[case(name, headers, body, now_ms, expect)],
                );
            }
        }
    }

    #[test]
    fn secrets() {
        let many = |n: usize| vec!["whsec_c2VjcmV0"; n];
        let cases: [(Scheme, Vec<&str>, Result<usize, SecretError>); 12] = [
            (Scheme::Standard, vec![], Err(SecretError::NoSecrets)),
            (Scheme::Github, vec![], Err(SecretError::NoSecrets)),
            (Scheme::Standard, many(SECRETS_MAX), Ok(SECRETS_MAX)),
            (
                Scheme::Stripe,
                many(SECRETS_MAX + 1),
                Err(SecretError::TooManySecrets {
                    count: SECRETS_MAX + 1,
                    max: SECRETS_MAX,
                }),
            ),
            (
                Scheme::Standard,
                vec!["whsec_"],
                Err(SecretError::Empty { index: 0 }),
            ),
            (
                Scheme::Standard,
                vec![SVIX_SECRET, ""],
                Err(SecretError::Empty { index: 1 }),
            ),
            (
                Scheme::Stripe,
                vec![STRIPE_SECRET, ""],
                Err(SecretError::Empty { index: 1 }),
            ),
            (
                Scheme::Github,
                vec![""],
                Err(SecretError::Empty { index: 0 }),
            ),
            (
                Scheme::Standard,
                vec![SVIX_SECRET, "whsec_It's a Secret to Everybody"],
                Err(SecretError::BadBase64 { index: 1 }),
            ),
            (
                Scheme::Standard,
                vec!["whsec_="],
                Err(SecretError::BadBase64 { index: 0 }),
            ),
            // Stripe's and GitHub's secrets are opaque bytes, `whsec_` prefix or not.
            (Scheme::Stripe, vec!["whsec_", "not base64!"], Ok(2)),
            (Scheme::Github, vec![GITHUB_SECRET], Ok(1)),
        ];
        for (scheme, secrets, expect) in cases {
            let owned: Vec<String> = secrets.iter().map(|s| (*s).to_owned()).collect();
            let got = Verifier::new(scheme, &owned, REPLAY_WINDOW_MS_DEFAULT);
            match (&got, &expect) {
                (Ok(v), Ok(count)) => {
                    assert_eq!(v.keys.len(), *count, "{scheme} {secrets:?}");
                    assert_eq!(v.scheme(), scheme);
                }
                (Err(e), Err(want)) => {
                    assert_eq!(e, want, "{scheme} {secrets:?}");
                    for secret in secrets.iter().filter(|s| s.len() > 6) {
                        assert!(!e.to_string().contains(secret), "{e} leaks {secret:?}");
                    }
                }
                _ => panic!("{scheme} {secrets:?}: got {got:?}, want {expect:?}"),
            }
        }
    }

    #[test]
    fn standard_secret_forms() {
        let key = standard_secret_key(SVIX_SECRET).expect("the published secret decodes");
        assert_eq!(key.len(), 24);
        let forms = [
            "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            // Padding is optional in secrets: 25 bytes, with and without its "==".
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSwAA==",
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSwAA",
        ];
        assert_eq!(standard_secret_key(forms[0]), Ok(key.clone()));
        let mut longer = key;
        longer.push(0);
        assert_eq!(standard_secret_key(forms[1]), Ok(longer.clone()));
        assert_eq!(standard_secret_key(forms[2]), Ok(longer));
        assert_eq!(
            standard_secret_key("whsec_@@@@"),
            Err(SecretError::BadBase64 { index: 0 })
        );
        assert_eq!(
            standard_secret_key(""),
            Err(SecretError::Empty { index: 0 })
        );
    }

    #[test]
    fn signing_matches_independent_vectors() {
        let key = standard_secret_key(SVIX_SECRET).expect("the published secret decodes");
        assert_eq!(sign_standard(&key, SVIX_ID, SVIX_TS, SVIX_BODY), SVIX_SIG);
        assert_eq!(
            sign_stripe(STRIPE_SECRET.as_bytes(), STRIPE_TS, STRIPE_BODY),
            format!("t={STRIPE_TS},v1={STRIPE_SIG_HEX}")
        );
        assert_eq!(
            sign_github(GITHUB_SECRET.as_bytes(), GITHUB_BODY),
            GITHUB_SIG
        );
    }

    #[test]
    fn sign_standard_round_trips() {
        let key = b"any key bytes at all, even \x00";
        let body = b"{\"type\":\"contact.created\"}";
        let secret = format!("whsec_{}", STANDARD.encode(key));
        let v = verifier(Scheme::Standard, &[&secret]);
        for (id, ts) in [("msg_1", 0), ("msg_2", 1_700_000_000), ("a.b", 42)] {
            let headers = vec![
                (HEADER_WEBHOOK_ID, id.into()),
                (HEADER_WEBHOOK_TIMESTAMP, ts.to_string().into()),
                (
                    HEADER_WEBHOOK_SIGNATURE,
                    sign_standard(key, id, ts, body).into(),
                ),
            ];
            let got = v.verify(&header_map(&headers), body, ts * 1000);
            let want = Verified {
                delivery_id: Some(id.to_owned()),
                timestamp_s: Some(ts),
            };
            assert_eq!(got, Ok(want), "{id} at {ts}");
        }
    }

    #[test]
    fn window_bounds() {
        let secrets = [SVIX_SECRET.to_owned()];
        let at = |window_ms: u64, now_ms: i64| {
            let v = Verifier::new(Scheme::Standard, &secrets, window_ms).expect("valid");
            v.verify(&header_map(&standard_headers()), SVIX_BODY, now_ms)
                .map(|v| v.timestamp_s)
        };
        assert_eq!(at(u64::MAX, i64::MIN), Ok(Some(SVIX_TS)));
        assert_eq!(at(u64::MAX, i64::MAX), Ok(Some(SVIX_TS)));
        assert_eq!(at(0, SVIX_NOW_MS), Ok(Some(SVIX_TS)));
        assert_eq!(
            at(0, SVIX_NOW_MS + 1),
            Err(SignatureError::StaleTimestamp {
                timestamp_s: SVIX_TS,
                now_s: SVIX_TS,
                window_ms: 0
            })
        );
    }

    #[test]
    fn parsers() {
        let a = [7u8; SHA256_BYTES].to_vec();
        let b = [9u8; SHA256_BYTES].to_vec();
        let (a64, b64) = (STANDARD.encode(&a), STANDARD.encode(&b));
        assert_eq!(
            parse_standard_signatures(&format!("v1,{a64} v1a,{b64} v2,x v1,{b64}")),
            Ok(vec![a.clone(), b.clone()])
        );
        assert_eq!(parse_standard_signatures("v1a,abc"), Ok(vec![]));
        assert_eq!(
            parse_stripe_header(&format!("t=0,v1={},v0=zz,v1={},x", to_hex(&a), to_hex(&b)))
                .map_err(|e| e.to_string()),
            Err("malformed header stripe-signature: an item is not key=value".to_owned())
        );
        assert_eq!(
            parse_stripe_header(&format!("t=0,v1={},v0=zz,v1={}", to_hex(&a), to_hex(&b))),
            Ok(StripeHeader {
                timestamp_s: 0,
                signatures: vec![a.clone(), b.clone()]
            })
        );
        assert_eq!(
            parse_stripe_header("t=1492774577"),
            Ok(StripeHeader {
                timestamp_s: 1_492_774_577,
                signatures: vec![]
            })
        );
        assert_eq!(
            parse_github_header(&format!("sha256={}", to_hex(&a))),
            Ok(a)
        );
        // Direct calls check the length limit too: the fuzz target and other callers may not
        // come through `Verifier::verify`.
        let long = "v".repeat(SIGNATURE_HEADER_BYTES_MAX + 1);
        for result in [
            parse_standard_signatures(&long).map(drop),
            parse_stripe_header(&long).map(drop),
            parse_github_header(&long).map(drop),
        ] {
            let reason = match &result {
                Err(SignatureError::MalformedHeader { reason, .. }) => reason.as_str(),
                _ => "",
            };
            assert!(reason.contains("longer than"), "{result:?}");
        }
    }

    #[test]
    fn debug_and_errors_hide_secrets() {
        let secrets = [SVIX_SECRET.to_owned(), "whsec_c2VjcmV0".to_owned()];
        let v = Verifier::new(Scheme::Standard, &secrets, REPLAY_WINDOW_MS_DEFAULT).expect("valid");
        let debug = format!("{v:?}");
        assert_eq!(
            debug,
            "Verifier { scheme: Standard, secrets: 2, replay_window_ms: 300000 }"
        );
        let key = standard_secret_key(SVIX_SECRET).expect("valid");
        assert!(!debug.contains(&format!("{key:?}")[1..20]));
        assert_no_secret(&debug);

        // A wrong signature: the error must not reveal the one expected.
        let forged = set(
            standard_headers(),
            HEADER_WEBHOOK_SIGNATURE,
            standard_wrong(3),
        );
        let e = v
            .verify(&header_map(&forged), SVIX_BODY, SVIX_NOW_MS)
            .expect_err("forged");
        assert_eq!(
            e.to_string(),
            "no signature in header webhook-signature matches a configured secret"
        );

        // Every variant's message, checked as text.
        let errors = [
            SignatureError::MissingHeader {
                header: "webhook-id",
            }
            .to_string(),
            malformed("stripe-signature", "no timestamp t").to_string(),
            too_long("x-hub-signature-256").to_string(),
            SignatureError::TooManySignatures {
                header: "webhook-signature",
                count: 17,
                max: 16,
            }
            .to_string(),
            SignatureError::StaleTimestamp {
                timestamp_s: 1,
                now_s: 400,
                window_ms: 300_000,
            }
            .to_string(),
            SecretError::NoSecrets.to_string(),
            SecretError::TooManySecrets { count: 9, max: 8 }.to_string(),
            SecretError::Empty { index: 2 }.to_string(),
            SecretError::BadBase64 { index: 3 }.to_string(),
        ];
        assert_eq!(
            errors,
            [
                "missing header webhook-id",
                "malformed header stripe-signature: no timestamp t",
                "malformed header x-hub-signature-256: the value is longer than 4096 bytes",
                "header webhook-signature has 17 signature entries, more than the 16 allowed",
                "signed timestamp 1 s is more than 300000 ms away from now (400 s)",
                "no webhook secret is configured",
                "9 webhook secrets are configured, more than the 8 allowed",
                "webhook secret 2 is empty",
                "webhook secret 3 is not base64 after its whsec_ prefix",
            ]
        );
    }

    #[test]
    fn scheme_names() {
        for (name, expect) in [
            ("standard", Some(Scheme::Standard)),
            ("stripe", Some(Scheme::Stripe)),
            ("github", Some(Scheme::Github)),
            ("GitHub", Some(Scheme::Github)),
            ("svix", None),
            ("", None),
            ("github ", None),
        ] {
            assert_eq!(Scheme::parse(name), expect, "{name:?}");
            assert_eq!(name.parse::<Scheme>().ok(), expect, "{name:?}");
        }
        for scheme in Scheme::ALL {
            assert_eq!(scheme.to_string().parse(), Ok(scheme));
        }
        assert_eq!(
            "svix".parse::<Scheme>().map_err(|e| e.to_string()),
            Err(
                "unknown webhook signature scheme \"svix\", expected standard, stripe or github"
                    .to_owned()
            )
        );
    }
}
