//! The webhook signature header parsers and `Verifier::verify`, for all three schemes, on
//! arbitrary header values and bodies.
//!
//! Input: a flags byte, `now_ms` (8 bytes, little-endian, read as `i64`), `window_ms` (8 bytes,
//! little-endian), then six header values, each a little-endian `u16` length and that many
//! bytes: `webhook-id`, `webhook-timestamp`, `webhook-signature`, `stripe-signature`,
//! `x-hub-signature-256`, `x-github-delivery`. The rest is the body.
//! * Flags bit 0 ("signed"): the clock is made non-negative and whole seconds, and each scheme's
//!   signature header gets a signature correctly made over the body at that time with one of the
//!   configured secrets (bit 1 picks which), appended to the fuzzed value as one more entry.
//!   Standard's timestamp header becomes that time. This gets the fuzzer past the HMAC.
//! * Flags bit 2: an empty value is sent as an empty header; otherwise the header is left out.
//!
//! Asserted, besides "never panics":
//! * each parser's `Ok` respects the limits (at most `SIGNATURES_PER_HEADER_MAX` signatures of
//!   32 bytes each) and agrees with the text (Stripe's `t=` item is present as parsed); each
//!   parser's error names that parser's header;
//! * an accepted delivery reports the delivery id and timestamp that were sent, and that
//!   timestamp is inside the replay window;
//! * a correctly signed delivery ("signed" mode) is never reported as unsigned or stale, and is
//!   accepted outright when the fuzzed parts around it are well-formed;
//! * no error message contains a configured secret.

#![no_main]

use gearbox_connectors::webhook::signature::{
    self, HEADER_GITHUB_DELIVERY, HEADER_GITHUB_SIGNATURE, HEADER_STRIPE_SIGNATURE,
    HEADER_WEBHOOK_ID, HEADER_WEBHOOK_SIGNATURE, HEADER_WEBHOOK_TIMESTAMP,
    SIGNATURE_HEADER_BYTES_MAX, SIGNATURES_PER_HEADER_MAX, Scheme, SignatureError, Verified,
    Verifier,
};
use gearbox_fuzz::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;

/// The header values read from the input, in this order.
const HEADERS: [&str; 6] = [
    HEADER_WEBHOOK_ID,
    HEADER_WEBHOOK_TIMESTAMP,
    HEADER_WEBHOOK_SIGNATURE,
    HEADER_STRIPE_SIGNATURE,
    HEADER_GITHUB_SIGNATURE,
    HEADER_GITHUB_DELIVERY,
];

/// Longest header value taken from the input: a little over the limit, so that the limit is
/// both hit and passed.
const VALUE_BYTES_MAX: usize = SIGNATURE_HEADER_BYTES_MAX + 16;

// Two secrets per scheme, so that rotation is exercised. The first ones sign the unit tests'
// vectors, which the seeds reuse.
const STANDARD_SECRETS: [&str; 2] = [
    "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
    "whsec_Zmxvb2RnYXRlLWZ1enota2V5",
];
const STRIPE_SECRETS: [&str; 2] = ["whsec_gearbox_stripe_test", "whsec_fuzz_second"];
const GITHUB_SECRETS: [&str; 2] = ["It's a Secret to Everybody", "fuzz second secret"];

fuzz_target!(|data: &[u8]| gearbox_fuzz::run(|| one(data)));

fn one(data: &[u8]) {
    let mut input = Bytes::new(data);
    let flags = input.u8();
    let signed = flags & 1 != 0;
    let secret_index = usize::from((flags >> 1) & 1);
    let mut now_ms = input.u64() as i64;
    let window_ms = input.u64();
    let mut values: [Vec<u8>; 6] = Default::default();
    for value in &mut values {
        let len = usize::from(input.u16()).min(VALUE_BYTES_MAX);
        *value = input.take(len).to_vec();
    }
    let body = input.rest();

    for (name, value) in HEADERS.iter().zip(&values) {
        if let Ok(text) = std::str::from_utf8(value) {
            check_parsers(name, text);
        }
    }

    let mut clean = None;
    if signed {
        // Non-negative whole seconds: the timestamp the signers write must read back as sent.
        now_ms = (now_ms >> 1).abs() / 1000 * 1000;
        clean = Some(sign(&mut values, secret_index, now_ms / 1000, body));
    }
    let headers = header_map(&values, flags & 4 != 0);
    for (i, scheme) in Scheme::ALL.into_iter().enumerate() {
        let verifier = verifier(scheme, window_ms);
        let result = verifier.verify(&headers, body, now_ms);
        check_result(scheme, &values, &result, now_ms, window_ms);
        if let Some(clean) = clean {
            check_signed(scheme, clean[i], &result);
        }
    }
}

/// Runs the parser that belongs to header `name` on `text`.
fn check_parsers(name: &str, text: &str) {
    match name {
        HEADER_WEBHOOK_SIGNATURE => match signature::parse_standard_signatures(text) {
            Ok(signatures) => check_signatures(&signatures),
            Err(e) => check_error(&e, name),
        },
        HEADER_STRIPE_SIGNATURE => match signature::parse_stripe_header(text) {
            Ok(parsed) => {
                check_signatures(&parsed.signatures);
                assert!(parsed.timestamp_s >= 0);
                let t = format!("t={}", parsed.timestamp_s);
                assert!(text.split(',').any(|item| item.trim() == t), "t as parsed");
            }
            Err(e) => check_error(&e, name),
        },
        HEADER_GITHUB_SIGNATURE => match signature::parse_github_header(text) {
            Ok(sig) => {
                assert_eq!(sig.len(), 32);
                assert!(text.starts_with("sha256=") && text.len() == 7 + 64);
            }
            Err(e) => check_error(&e, name),
        },
        _ => {}
    }
}

fn check_signatures(signatures: &[Vec<u8>]) {
    assert!(signatures.len() <= SIGNATURES_PER_HEADER_MAX);
    assert!(signatures.iter().all(|s| s.len() == 32));
}

/// A parser's error: it names the parser's header, and its message says so.
fn check_error(e: &SignatureError, name: &str) {
    match e {
        SignatureError::MalformedHeader { header, reason } => {
            assert_eq!(*header, name);
            assert!(!reason.is_empty());
        }
        SignatureError::TooManySignatures { header, count, max } => {
            assert_eq!(*header, name);
            assert!(count > max);
        }
        other => panic!("a parser returned {other:?}"),
    }
    assert!(e.to_string().contains(name));
}

/// Replaces the signature headers with correctly signed ones at `now_s`, keeping the fuzzed
/// values as extra entries in front. Returns, per scheme in `Scheme::ALL` order, whether the
/// delivery is clean: nothing fuzzed besides the signed parts, and a usable delivery id.
fn sign(values: &mut [Vec<u8>; 6], secret_index: usize, now_s: i64, body: &[u8]) -> [bool; 3] {
    let standard_key = signature::standard_secret_key(STANDARD_SECRETS[secret_index])
        .expect("the fuzz secrets are valid");
    let id = String::from_utf8_lossy(&values[0]).into_owned();
    values[0] = id.clone().into_bytes();
    values[1] = now_s.to_string().into_bytes();
    let clean = [
        values[2].is_empty() && usable_id(&values[0]),
        values[3].is_empty(),
        usable_id(&values[5]),
    ];
    let standard = signature::sign_standard(&standard_key, &id, now_s, body);
    values[2] = joined(&values[2], b' ', &standard);
    let stripe = signature::sign_stripe(STRIPE_SECRETS[secret_index].as_bytes(), now_s, body);
    values[3] = joined(&values[3], b',', &stripe);
    let github = signature::sign_github(GITHUB_SECRETS[secret_index].as_bytes(), body);
    values[4] = github.into_bytes();
    clean
}

/// Whether `value` makes it through `header_map` and is a delivery id `verify` accepts.
fn usable_id(value: &[u8]) -> bool {
    !value.is_empty()
        && value.len() <= SIGNATURE_HEADER_BYTES_MAX
        && std::str::from_utf8(value).is_ok()
        && HeaderValue::from_bytes(value).is_ok()
}

fn joined(prefix: &[u8], separator: u8, entry: &str) -> Vec<u8> {
    if prefix.is_empty() {
        return entry.as_bytes().to_vec();
    }
    [prefix, &[separator], entry.as_bytes()].concat()
}

fn header_map(values: &[Vec<u8>; 6], send_empty: bool) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (name, value) in HEADERS.iter().zip(values) {
        if value.is_empty() && !send_empty {
            continue;
        }
        // Bytes no HTTP stack would deliver (control characters) leave the header out.
        if let Ok(value) = HeaderValue::from_bytes(value) {
            headers.insert(HeaderName::from_static(name), value);
        }
    }
    headers
}

fn verifier(scheme: Scheme, window_ms: u64) -> Verifier {
    let secrets = match scheme {
        Scheme::Standard => STANDARD_SECRETS,
        Scheme::Stripe => STRIPE_SECRETS,
        Scheme::Github => GITHUB_SECRETS,
    };
    let secrets = secrets.map(str::to_owned);
    Verifier::new(scheme, &secrets, window_ms).expect("the fuzz secrets are valid")
}

fn check_result(
    scheme: Scheme,
    values: &[Vec<u8>; 6],
    result: &Result<Verified, SignatureError>,
    now_ms: i64,
    window_ms: u64,
) {
    let verified = match result {
        Ok(verified) => verified,
        Err(e) => {
            let text = e.to_string();
            assert!(!text.is_empty());
            for secret in STANDARD_SECRETS
                .iter()
                .chain(&STRIPE_SECRETS)
                .chain(&GITHUB_SECRETS)
            {
                assert!(!text.contains(secret), "{text:?} leaks a secret");
            }
            return;
        }
    };
    if let Some(t) = verified.timestamp_s {
        let skew_ms = i128::from(now_ms) - i128::from(t) * 1000;
        assert!(
            skew_ms.unsigned_abs() <= u128::from(window_ms),
            "accepted a stale timestamp"
        );
    }
    match scheme {
        Scheme::Standard => {
            assert_eq!(
                verified.delivery_id.as_deref().map(str::as_bytes),
                Some(&values[0][..])
            );
            let sent = std::str::from_utf8(&values[1])
                .ok()
                .and_then(|t| t.parse().ok());
            assert_eq!(verified.timestamp_s, sent);
        }
        Scheme::Stripe => assert!(verified.timestamp_s.is_some()),
        Scheme::Github => {
            assert_eq!(
                verified.delivery_id.as_deref().map(str::as_bytes),
                Some(&values[5][..])
            );
            assert_eq!(verified.timestamp_s, None);
        }
    }
}

/// A correctly signed delivery at `now` is never unsigned or stale; when `clean`, it is
/// accepted.
fn check_signed(scheme: Scheme, clean: bool, result: &Result<Verified, SignatureError>) {
    if let Err(
        e @ (SignatureError::NoValidSignature { .. } | SignatureError::StaleTimestamp { .. }),
    ) = result
    {
        panic!("{scheme}: a correctly signed delivery was rejected: {e}");
    }
    if clean {
        assert!(
            result.is_ok(),
            "{scheme}: a cleanly signed delivery was rejected: {result:?}"
        );
    }
}
