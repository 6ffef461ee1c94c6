//! App ids: the Meteroid id scheme over a Kubernetes `metadata.uid`.
//!
//! The uid of an `OAuthApp` object is a UUID. Users see it as `app_` followed by the base62
//! form of that UUID, rotated left by 67 bits. That gives ids that are short, safe in a URL,
//! easy to copy, and clearly not a raw UUID. The rotation spreads the fixed UUID version and
//! variant bits through the string, so ids do not all start with the same characters.
//!
//! [`decode`] also accepts the bare hyphenated UUID. Users can then paste the uid that
//! `kubectl get -o yaml` shows. It accepts only the canonical prefixed form: no leading zeros.
//! So `encode(decode(s)?) == s` holds for every prefixed id that decodes. That matters anywhere
//! the id string serves as a key, for example in labels, logs and URLs.

use uuid::Uuid;

/// The prefix that marks a string as an app id. It tells readers, and secret scanners, what
/// kind of value it is, and it keeps ids apart from other base62 tokens.
pub const PREFIX: &str = "app_";

/// The base62 digits, in value order. ASCII order keeps the encoding easy to check by hand.
const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// How far the UUID is rotated left before encoding. This is part of the wire format: changing
/// it changes every id.
const ROTATION: u32 = 67;

/// The longest body a u128 can need: 62^21 < 2^128 <= 62^22.
const MAX_BODY_LEN: usize = 22;

/// The longest input that can possibly be valid: a hyphenated UUID (36 bytes). Any prefixed id
/// is shorter (4 + 22 = 26 bytes). Longer input is rejected before any parsing, so it cannot
/// cost extra work or end up in error messages.
const MAX_INPUT_LEN: usize = 36;

/// How much of a bad input an error message may echo back. Ids are not secret, but error
/// messages end up in logs and in API responses, so they must stay short.
const MAX_ECHO_CHARS: usize = 64;

/// Why a string is not a valid app id.
///
/// Every variant is specific enough for an API response to tell the user what to fix. No
/// variant carries more than a short, sanitized excerpt of the input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// The input was empty.
    #[error("app id is empty")]
    Empty,
    /// The input is longer than any valid id, or the part after `app_` is longer than a
    /// 128-bit value can need.
    #[error("app id is too long: {len} bytes where at most {max} are allowed")]
    TooLong {
        /// The length of the rejected input (or body), in bytes.
        len: usize,
        /// The largest length that can be valid.
        max: usize,
    },
    /// The input neither starts with `app_` nor has the shape of a hyphenated UUID.
    #[error("app id {input:?} must start with \"app_\" or be a hyphenated UUID")]
    UnknownFormat {
        /// A sanitized excerpt of the input.
        input: String,
    },
    /// The input was exactly `app_`.
    #[error("app id has nothing after the \"app_\" prefix")]
    EmptyBody,
    /// A character after `app_` is not a base62 digit.
    #[error(
        "app id has {} at character {position}; only 0-9, A-Z and a-z may follow \"app_\"",
        render_char(*.ch)
    )]
    InvalidChar {
        /// The offending character.
        ch: char,
        /// Its index in the whole input, counted in characters.
        position: usize,
    },
    /// The body starts with `0` but is not exactly `0`. Such an id would decode to the same
    /// UUID as the id without the zeros, so it is not canonical.
    #[error("app id has a leading zero after \"app_\"; the canonical form has none")]
    LeadingZero,
    /// The body encodes a number too large for 128 bits.
    #[error("app id is out of range: its value does not fit in 128 bits")]
    Overflow,
    /// The input has the shape of a hyphenated UUID but does not parse as one.
    #[error("app id {input:?} looks like a UUID but is not a valid one")]
    InvalidUuid {
        /// A sanitized excerpt of the input.
        input: String,
    },
}

/// Turns a Kubernetes uid into the app id that users see.
///
/// The function is total: every UUID, including the nil UUID (`app_0`), has exactly one id.
#[must_use]
pub fn encode(uuid: Uuid) -> String {
    let mut n = uuid.as_u128().rotate_left(ROTATION);
    let mut digits = [0u8; MAX_BODY_LEN];
    let mut start = MAX_BODY_LEN;
    loop {
        start -= 1;
        digits[start] = ALPHABET[(n % 62) as usize];
        n /= 62;
        if n == 0 {
            break;
        }
    }
    let mut out = String::with_capacity(PREFIX.len() + MAX_BODY_LEN - start);
    out.push_str(PREFIX);
    out.extend(digits[start..].iter().copied().map(char::from));
    out
}

/// Turns an app id, or a bare hyphenated UUID, back into the uid.
///
/// Bare UUIDs are accepted (in either case) so that users can paste the uid that kubectl
/// shows. Other UUID spellings (simple, braced, `urn:uuid:`) are rejected. That keeps the set
/// of accepted strings small and predictable.
///
/// # Errors
///
/// Returns an [`IdError`] that says what is wrong with the input.
pub fn decode(s: &str) -> Result<Uuid, IdError> {
    if s.is_empty() {
        return Err(IdError::Empty);
    }
    if s.len() > MAX_INPUT_LEN {
        return Err(IdError::TooLong {
            len: s.len(),
            max: MAX_INPUT_LEN,
        });
    }
    if let Some(body) = s.strip_prefix(PREFIX) {
        let n = decode_body(body)?;
        return Ok(Uuid::from_u128(n.rotate_right(ROTATION)));
    }
    if has_hyphenated_uuid_shape(s) {
        return Uuid::try_parse(s).map_err(|_| IdError::InvalidUuid { input: sanitize(s) });
    }
    Err(IdError::UnknownFormat { input: sanitize(s) })
}

/// Decodes the base62 part of a prefixed id, enforcing the canonical form.
fn decode_body(body: &str) -> Result<u128, IdError> {
    if body.is_empty() {
        return Err(IdError::EmptyBody);
    }
    if body.len() > MAX_BODY_LEN {
        return Err(IdError::TooLong {
            len: body.len(),
            max: MAX_BODY_LEN,
        });
    }
    let mut n: u128 = 0;
    for (i, ch) in body.chars().enumerate() {
        let digit = digit_value(ch).ok_or(IdError::InvalidChar {
            ch,
            position: PREFIX.len() + i,
        })?;
        n = n
            .checked_mul(62)
            .and_then(|n| n.checked_add(u128::from(digit)))
            .ok_or(IdError::Overflow)?;
    }
    if body.len() > 1 && body.starts_with('0') {
        return Err(IdError::LeadingZero);
    }
    Ok(n)
}

/// The value of a base62 digit, or `None` for any other character.
const fn digit_value(ch: char) -> Option<u8> {
    match ch {
        '0'..='9' => Some(ch as u8 - b'0'),
        'A'..='Z' => Some(ch as u8 - b'A' + 10),
        'a'..='z' => Some(ch as u8 - b'a' + 36),
        _ => None,
    }
}

/// True for `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx` shaped input. The hex digits are checked
/// later by the UUID parser.
fn has_hyphenated_uuid_shape(s: &str) -> bool {
    let bytes = s.as_bytes();
    bytes.len() == 36 && [8, 13, 18, 23].iter().all(|&i| bytes[i] == b'-')
}

/// A short excerpt of untrusted input that is safe to put in a log line or a response. It
/// keeps at most [`MAX_ECHO_CHARS`] characters and replaces anything that is not printable
/// ASCII with `?`. That blocks terminal escapes, newlines and bidi tricks.
fn sanitize(s: &str) -> String {
    let mut out: String = s
        .chars()
        .take(MAX_ECHO_CHARS)
        .map(|c| if c == ' ' || c.is_ascii_graphic() { c } else { '?' })
        .collect();
    if s.chars().nth(MAX_ECHO_CHARS).is_some() {
        out.push_str("...");
    }
    out
}

/// Shows a printable ASCII character as itself in quotes, and any other character as its
/// code point, so that an error message never contains control or invisible characters.
fn render_char(ch: char) -> String {
    if ch.is_ascii_graphic() {
        format!("'{ch}'")
    } else {
        format!("U+{:04X}", u32::from(ch))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MAX_UUID: &str = "ffffffff-ffff-ffff-ffff-ffffffffffff";
    const MAX_ID: &str = "app_7n42DGM5Tflk9n8mt7Fhc7";

    fn uuid(s: &str) -> Uuid {
        Uuid::parse_str(s).unwrap()
    }

    #[test]
    fn test_vector_max_uuid() {
        assert_eq!(encode(uuid(MAX_UUID)), MAX_ID);
        assert_eq!(decode(MAX_ID).unwrap(), uuid(MAX_UUID));
        assert_eq!(decode(MAX_UUID).unwrap(), uuid(MAX_UUID));
    }

    #[test]
    fn test_vector_arbitrary_uuid() {
        // The all-ones UUID is unchanged by any rotation, so the vector above cannot catch a
        // wrong rotation. This value was computed independently (Python big ints).
        let u = uuid("67e55044-10b1-426f-9247-bb680e5fe0c8");
        assert_eq!(encode(u), "app_4Rx9BkQZq8y5SztDi12fAi");
        assert_eq!(decode("app_4Rx9BkQZq8y5SztDi12fAi").unwrap(), u);
    }

    #[test]
    fn rotation_is_left_by_67() {
        // 1 << 61 rotated left by 67 wraps around to 1 << 0.
        assert_eq!(encode(Uuid::from_u128(1 << 61)), "app_1");
        // 1 rotated left by 67 is 2^67, which is 2ppSGe8nKGQ4 in base62.
        assert_eq!(encode(Uuid::from_u128(1)), "app_2ppSGe8nKGQ4");
        assert_eq!(decode("app_1").unwrap(), Uuid::from_u128(1 << 61));
        assert_eq!(decode("app_2ppSGe8nKGQ4").unwrap(), Uuid::from_u128(1));
    }

    #[test]
    fn nil_uuid_is_app_0() {
        assert_eq!(encode(Uuid::nil()), "app_0");
        assert_eq!(decode("app_0").unwrap(), Uuid::nil());
        assert_eq!(
            decode("00000000-0000-0000-0000-000000000000").unwrap(),
            Uuid::nil()
        );
    }

    #[test]
    fn prefix_constant() {
        assert_eq!(PREFIX, "app_");
        assert!(encode(Uuid::nil()).starts_with(PREFIX));
    }

    #[test]
    fn accepts_uppercase_hyphenated_uuid() {
        assert_eq!(
            decode("67E55044-10B1-426F-9247-BB680E5FE0C8").unwrap(),
            uuid("67e55044-10b1-426f-9247-bb680e5fe0c8")
        );
    }

    #[test]
    fn rejects_other_uuid_spellings() {
        for s in [
            "67e5504410b1426f9247bb680e5fe0c8",
            "{67e55044-10b1-426f-9247-bb680e5fe0c8}",
            "urn:uuid:67e55044-10b1-426f-9247-bb680e5fe0c8",
        ] {
            assert!(decode(s).is_err(), "{s} should be rejected");
        }
        assert!(matches!(
            decode("67e5504410b1426f9247bb680e5fe0c8"),
            Err(IdError::UnknownFormat { .. })
        ));
        assert!(matches!(
            decode("{67e55044-10b1-426f-9247-bb680e5fe0c8}"),
            Err(IdError::TooLong { len: 38, max: 36 })
        ));
    }

    #[test]
    fn rejects_invalid_uuid_with_the_right_shape() {
        let err = decode("gggggggg-10b1-426f-9247-bb680e5fe0c8").unwrap_err();
        assert_eq!(
            err,
            IdError::InvalidUuid {
                input: "gggggggg-10b1-426f-9247-bb680e5fe0c8".to_owned()
            }
        );
        assert!(err.to_string().contains("looks like a UUID"));
    }

    #[test]
    fn rejects_empty() {
        assert_eq!(decode(""), Err(IdError::Empty));
        assert_eq!(decode("app_"), Err(IdError::EmptyBody));
    }

    #[test]
    fn rejects_missing_or_other_prefix() {
        for s in [
            "7n42DGM5Tflk9n8mt7Fhc7",
            "APP_1",
            "ap_1",
            "app1",
            "usr_1",
            "_app_1",
        ] {
            assert_eq!(
                decode(s),
                Err(IdError::UnknownFormat { input: s.to_owned() }),
                "{s}"
            );
        }
    }

    #[test]
    fn rejects_chars_outside_alphabet() {
        assert_eq!(
            decode("app_12-4"),
            Err(IdError::InvalidChar { ch: '-', position: 6 })
        );
        assert_eq!(
            decode("app_ 1"),
            Err(IdError::InvalidChar { ch: ' ', position: 4 })
        );
        let err = decode("app_1é").unwrap_err();
        assert_eq!(
            err,
            IdError::InvalidChar {
                ch: 'é', position: 5
            }
        );
        assert!(err.to_string().contains("U+00E9"), "{err}");
        assert!(!err.to_string().contains('é'));
        let err = decode("app_1\u{1b}").unwrap_err();
        assert!(err.to_string().contains("U+001B"), "{err}");
        assert!(!err.to_string().contains('\u{1b}'));
    }

    #[test]
    fn rejects_leading_zeros() {
        assert_eq!(decode("app_00"), Err(IdError::LeadingZero));
        assert_eq!(decode("app_01"), Err(IdError::LeadingZero));
        assert_eq!(decode("app_07n42DGM5Tflk9n8mt7Fhc"), Err(IdError::LeadingZero));
    }

    #[test]
    fn rejects_overflow() {
        // u128::MAX + 1
        assert_eq!(decode("app_7n42DGM5Tflk9n8mt7Fhc8"), Err(IdError::Overflow));
        assert_eq!(decode("app_zzzzzzzzzzzzzzzzzzzzzz"), Err(IdError::Overflow));
        assert_eq!(decode("app_8000000000000000000000"), Err(IdError::Overflow));
    }

    #[test]
    fn rejects_overlong_input() {
        assert_eq!(
            decode("app_11111111111111111111111"),
            Err(IdError::TooLong { len: 23, max: 22 })
        );
        let long = format!("app_{}", "1".repeat(10_000));
        let err = decode(&long).unwrap_err();
        assert_eq!(err, IdError::TooLong { len: 10_004, max: 36 });
        assert!(!err.to_string().contains("1111"));
    }

    #[test]
    fn error_messages_are_sanitized() {
        let err = decode("\u{1b}[31mred\n\u{202e}x").unwrap_err();
        let msg = err.to_string();
        assert!(!msg.contains('\u{1b}'), "{msg:?}");
        assert!(!msg.contains('\n'), "{msg:?}");
        assert!(!msg.contains('\u{202e}'), "{msg:?}");
        assert!(msg.contains("?[31mred??x"), "{msg:?}");
    }

    #[test]
    fn sanitize_caps_length() {
        let s = "x".repeat(100);
        let out = sanitize(&s);
        assert_eq!(out, format!("{}...", "x".repeat(MAX_ECHO_CHARS)));
        assert_eq!(sanitize("short"), "short");
    }

    #[test]
    fn error_messages_name_the_problem() {
        assert!(decode("").unwrap_err().to_string().contains("empty"));
        assert!(decode("app_").unwrap_err().to_string().contains("nothing after"));
        assert!(decode("foo").unwrap_err().to_string().contains("\"foo\""));
        assert!(decode("app_00").unwrap_err().to_string().contains("leading zero"));
        assert!(
            decode("app_zzzzzzzzzzzzzzzzzzzzzz")
                .unwrap_err()
                .to_string()
                .contains("128 bits")
        );
        assert!(
            decode("app_a!")
                .unwrap_err()
                .to_string()
                .contains("'!' at character 5")
        );
    }

    proptest! {
        #[test]
        fn prop_roundtrip(n in any::<u128>()) {
            let u = Uuid::from_u128(n);
            prop_assert_eq!(decode(&encode(u)), Ok(u));
        }

        #[test]
        fn prop_decode_hyphenated_uuid(n in any::<u128>()) {
            let u = Uuid::from_u128(n);
            prop_assert_eq!(decode(&u.to_string()), Ok(u));
            prop_assert_eq!(decode(&u.to_string().to_uppercase()), Ok(u));
        }

        #[test]
        fn prop_encoding_is_canonical(n in any::<u128>()) {
            let id = encode(Uuid::from_u128(n));
            let body = id.strip_prefix(PREFIX).unwrap();
            prop_assert!(!body.is_empty() && body.len() <= MAX_BODY_LEN);
            prop_assert!(body.bytes().all(|b| b.is_ascii_alphanumeric()));
            prop_assert!(body == "0" || !body.starts_with('0'));
        }

        #[test]
        fn prop_accepted_prefixed_ids_are_canonical(body in "[0-9A-Za-z]{0,24}") {
            let s = format!("{PREFIX}{body}");
            if let Ok(u) = decode(&s) {
                prop_assert_eq!(encode(u), s);
            }
        }

        #[test]
        fn prop_errors_are_bounded(s in any::<String>()) {
            if let Err(err) = decode(&s) {
                let msg = err.to_string();
                prop_assert!(msg.len() <= 200, "{} bytes: {}", msg.len(), msg);
                prop_assert!(msg.chars().all(|c| c == ' ' || c.is_ascii_graphic()), "{:?}", msg);
            }
        }
    }
}
