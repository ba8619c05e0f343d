//! Fully qualified domain names as lbfleet accepts them: RFC 1123 host names, lowercase,
//! internationalised names in their punycode (`xn--`) form.
//!
//! An [`Fqdn`] becomes a key in HAProxy maps and travels inside runtime API commands
//! (`add map <file> <key> <value>\n`), so only `[a-z0-9.-]` ever gets through: no
//! whitespace, no control character, nothing that could end one command and start another.
//! The same check runs at the edge and again when the state machine reads a name back, so
//! a value of this type is canonical wherever it is seen.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use idna::uts46::{AsciiDenyList, DnsLength, Hyphens, Uts46};

/// Longest name in bytes, without the trailing dot (RFC 1123 section 2.1).
const MAX_LEN: usize = 253;
/// Longest label in bytes.
const MAX_LABEL_LEN: usize = 63;
/// Non-ASCII input longer than this is refused before IDNA sees it: every code point of a
/// label adds at least one byte to its punycode, so no such input can give a valid name
/// short of padding made of characters that IDNA deletes.
const MAX_IDN_INPUT: usize = 4 * MAX_LEN;
/// How many characters of the input an error message quotes.
const SHOWN_CHARS: usize = 256;

/// A validated, canonical host name: lowercase ASCII letters, digits, `-` and `.` only.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Fqdn(String);

impl Fqdn {
    /// Validates and canonicalises operator input.
    pub fn parse(input: &str) -> Result<Fqdn, FqdnError> {
        check_surrounding_whitespace(input)?;
        if !input.is_ascii() {
            return parse_unicode(input);
        }
        let checked = check_ascii(input, input)?;
        let name = &input[..checked.len];
        if checked.punycode {
            verify_punycode(name, input)?;
        }
        Ok(Fqdn(name.to_ascii_lowercase()))
    }

    /// The canonical name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The canonical name, without copying it.
    pub fn into_string(self) -> String {
        self.0
    }
}

impl FromStr for Fqdn {
    type Err = FqdnError;

    fn from_str(input: &str) -> Result<Fqdn, FqdnError> {
        Fqdn::parse(input)
    }
}

impl fmt::Display for Fqdn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for Fqdn {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Fqdn {
    type Error = FqdnError;

    /// Validates like [`Fqdn::parse`], reusing the buffer of ASCII input (snapshot restore
    /// reads a million names this way).
    fn try_from(mut input: String) -> Result<Fqdn, FqdnError> {
        if !input.is_ascii() {
            return Fqdn::parse(&input);
        }
        check_surrounding_whitespace(&input)?;
        let checked = check_ascii(&input, &input)?;
        if checked.punycode {
            verify_punycode(&input[..checked.len], &input)?;
        }
        input.truncate(checked.len);
        input.make_ascii_lowercase();
        Ok(Fqdn(input))
    }
}

impl From<Fqdn> for String {
    fn from(fqdn: Fqdn) -> String {
        fqdn.0
    }
}

/// Why a string is not an acceptable FQDN.
///
/// `input` is the input as given, cut after 256 characters; `at` is a byte offset into it.
/// Every message is one line: characters that are not printable are escaped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
pub enum FqdnError {
    /// Nothing was given.
    #[error("invalid FQDN: the name is empty")]
    Empty,
    /// Whitespace before or after the name (it is not trimmed silently).
    #[error("invalid FQDN {input:?}: {} {}; remove it", if *.at == 0 { "starts with" } else { "ends with" }, CharName(*.ch))]
    SurroundingWhitespace { input: String, ch: char, at: usize },
    /// Whitespace inside the name.
    #[error("invalid FQDN {input:?}: contains {} at byte {at}; host names cannot contain whitespace", CharName(*.ch))]
    Whitespace { input: String, ch: char, at: usize },
    /// A control character (newline, carriage return, tab, NUL, ...).
    #[error("invalid FQDN {input:?}: contains {} at byte {at}; control characters are not allowed", CharName(*.ch))]
    ControlCharacter { input: String, ch: char, at: usize },
    /// A `:`, as in `host:port` or an IPv6 address.
    #[error("invalid FQDN {input:?}: contains ':' at byte {at}; ports are not part of an FQDN, drop the \":port\"")]
    Port { input: String, at: usize },
    /// A `*`.
    #[error("invalid FQDN {input:?}: contains '*' at byte {at}; wildcard names are not supported, bind each name")]
    Wildcard { input: String, at: usize },
    /// A `_`, which DNS allows in some records but host names do not.
    #[error("invalid FQDN {input:?}: contains '_' at byte {at}; host names allow letters, digits and '-' only")]
    Underscore { input: String, at: usize },
    /// An `@`, as in an e-mail address or `user@host`.
    #[error("invalid FQDN {input:?}: contains '@' at byte {at}; give the host name only, not user@host")]
    AtSign { input: String, at: usize },
    /// A `/`, or the `:` of `scheme://`: a URL or a path was given.
    #[error("invalid FQDN {input:?}: contains {} at byte {at}; give the host name only, not a URL or a path", CharName(*.ch))]
    Url { input: String, ch: char, at: usize },
    /// Any other character that host names cannot contain.
    #[error("invalid FQDN {input:?}: contains {} at byte {at}; host names allow letters, digits, '-' and '.' only", CharName(*.ch))]
    InvalidCharacter { input: String, ch: char, at: usize },
    /// A leading dot or two dots in a row.
    #[error("invalid FQDN {input:?}: empty label at byte {at}; remove the leading or doubled dot")]
    EmptyLabel { input: String, at: usize },
    /// A label longer than 63 bytes.
    #[error("invalid FQDN {input:?}: label {label:?} is {len} bytes long; a label may have at most 63")]
    LabelTooLong { input: String, label: String, len: usize },
    /// A label that starts or ends with `-`.
    #[error("invalid FQDN {input:?}: label {label:?} {} with '-'; a label must begin and end with a letter or digit", if .label.starts_with('-') { "starts" } else { "ends" })]
    LabelHyphen { input: String, label: String },
    /// More than 253 bytes in all (after conversion to punycode, without the trailing dot).
    #[error("invalid FQDN {input:?}: it is {len} bytes long; an FQDN may have at most 253")]
    TooLong { input: String, len: usize },
    /// The last label is all digits, as in an IPv4 address.
    #[error(
        "invalid FQDN {input:?}: the last label {label:?} is all digits; IP addresses are not FQDNs, give a host name"
    )]
    NumericTld { input: String, label: String },
    /// A label that IDNA (UTS #46) rejects: bad punycode, a disallowed or misplaced character.
    #[error("invalid FQDN {input:?}: label {label:?} is not a valid internationalised (IDNA) label")]
    InvalidIdn { input: String, label: String },
}

/// A character as error messages name it, escaped so that no message can carry a raw
/// line break or other invisible character.
struct CharName(char);

impl fmt::Display for CharName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            ' ' => f.write_str("a space"),
            '\t' => f.write_str("a tab ('\\t')"),
            '\n' => f.write_str("a newline ('\\n')"),
            '\r' => f.write_str("a carriage return ('\\r')"),
            c if c.is_ascii_graphic() => write!(f, "{c:?}"),
            c => write!(f, "{c:?} (U+{:04X})", u32::from(c)),
        }
    }
}

/// The input as error messages quote it, cut so that a huge input cannot make a huge message.
fn shown(input: &str) -> String {
    match input.char_indices().nth(SHOWN_CHARS) {
        Some((at, _)) => format!("{}…", &input[..at]),
        None => input.to_owned(),
    }
}

/// Bytes a host name may contain, in either case.
fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'.'
}

/// The characters that UTS #46 maps to a label separator.
fn is_dot(ch: char) -> bool {
    matches!(ch, '.' | '\u{3002}' | '\u{ff0e}' | '\u{ff61}')
}

/// The error for a character, found at byte `at` of `input`, that a host name cannot contain.
fn bad_char(input: &str, ch: char, at: usize) -> FqdnError {
    let after = input.get(at + ch.len_utf8()..).unwrap_or("");
    let input = shown(input);
    match ch {
        ':' if after.starts_with("//") => FqdnError::Url { input, ch, at },
        ':' => FqdnError::Port { input, at },
        '/' => FqdnError::Url { input, ch, at },
        '*' => FqdnError::Wildcard { input, at },
        '_' => FqdnError::Underscore { input, at },
        '@' => FqdnError::AtSign { input, at },
        c if c.is_control() => FqdnError::ControlCharacter { input, ch, at },
        c if c.is_whitespace() => FqdnError::Whitespace { input, ch, at },
        _ => FqdnError::InvalidCharacter { input, ch, at },
    }
}

/// Rejects empty input and whitespace at either end, which is never trimmed silently.
fn check_surrounding_whitespace(input: &str) -> Result<(), FqdnError> {
    let Some(first) = input.chars().next() else {
        return Err(FqdnError::Empty);
    };
    if first.is_whitespace() {
        return Err(FqdnError::SurroundingWhitespace { input: shown(input), ch: first, at: 0 });
    }
    match input.chars().next_back() {
        Some(last) if last.is_whitespace() => {
            Err(FqdnError::SurroundingWhitespace { input: shown(input), ch: last, at: input.len() - last.len_utf8() })
        }
        _ => Ok(()),
    }
}

/// What [`check_ascii`] learnt about a name that passed it.
struct Checked {
    /// Length of the name without its trailing dot.
    len: usize,
    /// Some label starts with `xn--` (in any case) and still needs IDNA's approval.
    punycode: bool,
}

/// Checks an ASCII name against the RFC 1123 rules, quoting `input` in errors; allocates
/// nothing unless the name is rejected.
fn check_ascii(name: &str, input: &str) -> Result<Checked, FqdnError> {
    let body = name.strip_suffix('.').unwrap_or(name);
    // Characters first: naming a stray character helps more than the structural
    // complaint it may also cause.
    if let Some(at) = body.bytes().position(|b| !is_name_byte(b)) {
        return Err(bad_char(input, char::from(body.as_bytes()[at]), at));
    }
    if body.is_empty() {
        return Err(if input.is_empty() {
            FqdnError::Empty
        } else {
            FqdnError::EmptyLabel { input: shown(input), at: 0 }
        });
    }
    let mut punycode = false;
    let mut start = 0;
    let mut last = "";
    for label in body.split('.') {
        if label.is_empty() {
            return Err(FqdnError::EmptyLabel { input: shown(input), at: start });
        }
        if label.len() > MAX_LABEL_LEN {
            return Err(FqdnError::LabelTooLong { input: shown(input), label: shown(label), len: label.len() });
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(FqdnError::LabelHyphen { input: shown(input), label: label.to_owned() });
        }
        punycode |= label.len() >= 4 && label.as_bytes()[..4].eq_ignore_ascii_case(b"xn--");
        start += label.len() + 1;
        last = label;
    }
    if body.len() > MAX_LEN {
        return Err(FqdnError::TooLong { input: shown(input), len: body.len() });
    }
    if last.bytes().all(|b| b.is_ascii_digit()) {
        return Err(FqdnError::NumericTld { input: shown(input), label: last.to_owned() });
    }
    Ok(Checked { len: body.len(), punycode })
}

/// UTS #46 ToASCII as lbfleet uses it: STD3 rules (letters, digits and hyphens only), no
/// hyphen at either end of a label, lengths left to [`check_ascii`].
fn to_ascii(name: &str) -> Result<Cow<'_, str>, idna::Errors> {
    Uts46::new().to_ascii(name.as_bytes(), AsciiDenyList::STD3, Hyphens::CheckFirstLast, DnsLength::Ignore)
}

/// Accepts an ASCII name with `xn--` labels only if IDNA decodes them to valid labels and
/// would give back the same name.
fn verify_punycode(name: &str, input: &str) -> Result<(), FqdnError> {
    match to_ascii(name) {
        Ok(ascii) if ascii.eq_ignore_ascii_case(name) => Ok(()),
        _ => Err(invalid_idn(input)),
    }
}

/// The error for a name IDNA rejected, naming the first label it rejects on its own
/// (or the whole input when only the combination fails, as with the bidi rule).
fn invalid_idn(input: &str) -> FqdnError {
    let label = input.split(is_dot).find(|label| !label.is_empty() && to_ascii(label).is_err()).unwrap_or(input);
    FqdnError::InvalidIdn { input: shown(input), label: shown(label) }
}

/// Validates and converts a name with non-ASCII characters to its punycode form.
fn parse_unicode(input: &str) -> Result<Fqdn, FqdnError> {
    // Catch what a host name can never contain before IDNA, which can only say "invalid",
    // and locate empty labels in the input rather than in its conversion.
    let mut label_start = 0;
    for (at, ch) in input.char_indices() {
        let allowed = if ch.is_ascii() { is_name_byte(ch as u8) } else { !ch.is_control() && !ch.is_whitespace() };
        if !allowed {
            return Err(bad_char(input, ch, at));
        }
        if is_dot(ch) {
            if at == label_start {
                return Err(FqdnError::EmptyLabel { input: shown(input), at });
            }
            label_start = at + ch.len_utf8();
        }
    }
    if input.len() > MAX_IDN_INPUT {
        return Err(FqdnError::TooLong { input: shown(input), len: input.len() });
    }
    let ascii = to_ascii(input).map_err(|_| invalid_idn(input))?;
    let checked = check_ascii(&ascii, input)?;
    let mut name = ascii.into_owned();
    name.truncate(checked.len);
    name.make_ascii_lowercase();
    Ok(Fqdn(name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde::de::value::{Error as DeError, StringDeserializer};
    use serde::de::IntoDeserializer;
    use serde::Deserialize;

    fn ok(input: &str) -> String {
        match Fqdn::parse(input) {
            Ok(fqdn) => fqdn.into_string(),
            Err(error) => panic!("{input:?} rejected: {error}"),
        }
    }

    fn err(input: &str) -> FqdnError {
        match Fqdn::parse(input) {
            Ok(fqdn) => panic!("{input:?} accepted as {fqdn}"),
            Err(error) => error,
        }
    }

    fn s(text: &str) -> String {
        text.to_owned()
    }

    #[test]
    fn accepts_host_names() {
        for name in [
            "example.com",
            "a.b.c.d",
            "localhost",
            "x.y",
            "a-b.c0m",
            "1password.com",
            "123.example.com",
            "example.c0",
            "r1---sn-4g5e6nz7.googlevideo.com",
        ] {
            assert_eq!(ok(name), name);
        }
    }

    #[test]
    fn lowercases_ascii() {
        assert_eq!(ok("WWW.Example.COM"), "www.example.com");
    }

    #[test]
    fn drops_a_single_trailing_dot() {
        assert_eq!(ok("example.com."), "example.com");
        assert_eq!(err("example.com.."), FqdnError::EmptyLabel { input: s("example.com.."), at: 12 });
    }

    #[test]
    fn converts_unicode_to_punycode() {
        assert_eq!(ok("münchen.de"), "xn--mnchen-3ya.de");
        assert_eq!(ok("BÜCHER.example"), "xn--bcher-kva.example");
        assert_eq!(ok("例え.テスト"), "xn--r8jz45g.xn--zckzah");
        assert_eq!(ok("ü。com"), "xn--tda.com");
        assert_eq!(ok("ü.com。"), "xn--tda.com");
        assert_eq!(ok("ＡＢＣ.com"), "abc.com");
    }

    #[test]
    fn accepts_valid_punycode() {
        assert_eq!(ok("xn--mnchen-3ya.de"), "xn--mnchen-3ya.de");
        assert_eq!(ok("XN--MNCHEN-3YA.DE."), "xn--mnchen-3ya.de");
        assert_eq!(ok("xn--r8jz45g.xn--zckzah"), "xn--r8jz45g.xn--zckzah");
    }

    #[test]
    fn rejects_invalid_punycode() {
        assert_eq!(err("xn--zz.com"), FqdnError::InvalidIdn { input: s("xn--zz.com"), label: s("xn--zz") });
        assert_eq!(err("a.xn--ab.com"), FqdnError::InvalidIdn { input: s("a.xn--ab.com"), label: s("xn--ab") });
        // Punycode of a pure ASCII label ends with the delimiter, so never passes.
        assert!(matches!(err("xn--abc-.com"), FqdnError::LabelHyphen { .. }));
    }

    #[test]
    fn rejects_invalid_unicode_labels() {
        assert_eq!(err("-ü.com"), FqdnError::InvalidIdn { input: s("-ü.com"), label: s("-ü") });
        assert!(matches!(err("a＿b.com"), FqdnError::InvalidIdn { .. }));
        assert!(matches!(err("\u{202e}abc.com"), FqdnError::InvalidIdn { .. }));
        // Bidi rule: a label starting with a digit in a right-to-left name.
        assert!(matches!(err("ا.1abc"), FqdnError::InvalidIdn { .. }));
    }

    #[test]
    fn rejects_empty_names_and_labels() {
        assert_eq!(err(""), FqdnError::Empty);
        assert_eq!(err("."), FqdnError::EmptyLabel { input: s("."), at: 0 });
        assert_eq!(err(".a"), FqdnError::EmptyLabel { input: s(".a"), at: 0 });
        assert_eq!(err("a..b"), FqdnError::EmptyLabel { input: s("a..b"), at: 2 });
        assert_eq!(err("ü..b"), FqdnError::EmptyLabel { input: s("ü..b"), at: 3 });
        assert_eq!(err("。ü"), FqdnError::EmptyLabel { input: s("。ü"), at: 0 });
        // A label IDNA maps to nothing (a lone soft hyphen).
        assert!(matches!(err("\u{ad}.com"), FqdnError::EmptyLabel { .. }));
    }

    #[test]
    fn rejects_surrounding_whitespace() {
        assert_eq!(err(" a.com"), FqdnError::SurroundingWhitespace { input: s(" a.com"), ch: ' ', at: 0 });
        assert_eq!(err("a.com\n"), FqdnError::SurroundingWhitespace { input: s("a.com\n"), ch: '\n', at: 5 });
        assert_eq!(err("a.com. "), FqdnError::SurroundingWhitespace { input: s("a.com. "), ch: ' ', at: 6 });
        assert_eq!(
            err("ü.com\u{3000}"),
            FqdnError::SurroundingWhitespace { input: s("ü.com\u{3000}"), ch: '\u{3000}', at: 6 }
        );
        assert_eq!(err(" a.com").to_string(), r#"invalid FQDN " a.com": starts with a space; remove it"#);
        assert_eq!(err("a.com\r\n").to_string(), r#"invalid FQDN "a.com\r\n": ends with a newline ('\n'); remove it"#);
    }

    #[test]
    fn rejects_whitespace_and_control_characters() {
        let space = err("a b.com");
        assert_eq!(space, FqdnError::Whitespace { input: s("a b.com"), ch: ' ', at: 1 });
        assert_eq!(
            space.to_string(),
            r#"invalid FQDN "a b.com": contains a space at byte 1; host names cannot contain whitespace"#
        );
        assert_eq!(err("a\tb.com"), FqdnError::ControlCharacter { input: s("a\tb.com"), ch: '\t', at: 1 });
        assert_eq!(err("a\u{0}b.com"), FqdnError::ControlCharacter { input: s("a\u{0}b.com"), ch: '\0', at: 1 });
        assert_eq!(err("a\u{7f}b.com"), FqdnError::ControlCharacter { input: s("a\u{7f}b.com"), ch: '\u{7f}', at: 1 });
        assert_eq!(err("ü\u{a0}b.com"), FqdnError::Whitespace { input: s("ü\u{a0}b.com"), ch: '\u{a0}', at: 2 });
        assert_eq!(err("ü\u{85}b.com"), FqdnError::ControlCharacter { input: s("ü\u{85}b.com"), ch: '\u{85}', at: 2 });
        assert_eq!(err("ü\u{2028}b.com"), FqdnError::Whitespace { input: s("ü\u{2028}b.com"), ch: '\u{2028}', at: 2 });
    }

    #[test]
    fn rejects_a_smuggled_runtime_api_command() {
        let input = "a.com\nclear map /etc/haproxy/fqdn.map\nx";
        let error = err(input);
        assert_eq!(error, FqdnError::ControlCharacter { input: s(input), ch: '\n', at: 5 });
        let message = error.to_string();
        assert_eq!(
            message,
            r#"invalid FQDN "a.com\nclear map /etc/haproxy/fqdn.map\nx": contains a newline ('\n') at byte 5; control characters are not allowed"#
        );
        assert!(matches!(err("a.com\rdel map m k"), FqdnError::ControlCharacter { ch: '\r', at: 5, .. }));
        assert!(matches!(err("a.com;x"), FqdnError::InvalidCharacter { ch: ';', at: 5, .. }));
    }

    #[test]
    fn rejects_punctuation_with_a_specific_reason() {
        assert_eq!(err("example.com:8080"), FqdnError::Port { input: s("example.com:8080"), at: 11 });
        assert!(err("example.com:8080").to_string().contains("ports are not part of an FQDN"));
        assert_eq!(err("https://example.com"), FqdnError::Url { input: s("https://example.com"), ch: ':', at: 5 });
        assert_eq!(err("example.com/path"), FqdnError::Url { input: s("example.com/path"), ch: '/', at: 11 });
        assert_eq!(err("*.example.com"), FqdnError::Wildcard { input: s("*.example.com"), at: 0 });
        assert!(err("*.example.com").to_string().contains("wildcard"));
        assert_eq!(err("_dmarc.example.com"), FqdnError::Underscore { input: s("_dmarc.example.com"), at: 0 });
        assert_eq!(err("user@example.com"), FqdnError::AtSign { input: s("user@example.com"), at: 4 });
        assert_eq!(err("exa!mple.com"), FqdnError::InvalidCharacter { input: s("exa!mple.com"), ch: '!', at: 3 });
        assert_eq!(err("a\\b.com"), FqdnError::InvalidCharacter { input: s("a\\b.com"), ch: '\\', at: 1 });
        // The same reasons in non-ASCII input, before IDNA sees it.
        assert_eq!(err("ü.com:80"), FqdnError::Port { input: s("ü.com:80"), at: 6 });
        assert_eq!(err("*.ü.com"), FqdnError::Wildcard { input: s("*.ü.com"), at: 0 });
    }

    #[test]
    fn checks_label_rules() {
        let long = "a".repeat(64);
        assert_eq!(ok(&format!("{}.com", &long[1..])).len(), 67);
        assert_eq!(
            err(&format!("{long}.com")),
            FqdnError::LabelTooLong { input: format!("{long}.com"), label: long.clone(), len: 64 }
        );
        assert_eq!(err("-a.com"), FqdnError::LabelHyphen { input: s("-a.com"), label: s("-a") });
        assert_eq!(err("a-.com"), FqdnError::LabelHyphen { input: s("a-.com"), label: s("a-") });
        assert_eq!(err("a.-.com"), FqdnError::LabelHyphen { input: s("a.-.com"), label: s("-") });
        assert!(err("-a.com").to_string().contains("label \"-a\" starts with '-'"));
        assert!(err("a-.com").to_string().contains("label \"a-\" ends with '-'"));
    }

    #[test]
    fn checks_total_length() {
        let label = "a".repeat(63);
        let name = format!("{label}.{label}.{label}.{}", "b".repeat(61));
        assert_eq!(name.len(), 253);
        assert_eq!(ok(&name), name);
        assert_eq!(ok(&format!("{name}.")), name);
        let longer = format!("{name}b");
        assert_eq!(err(&longer), FqdnError::TooLong { input: longer.clone(), len: 254 });
        // Length counts after conversion to punycode.
        let unicode = format!("{label}.{label}.{label}.ü{}", "b".repeat(54));
        assert!(matches!(err(&unicode), FqdnError::TooLong { len: 254, .. }));
    }

    #[test]
    fn rejects_ip_addresses() {
        assert_eq!(err("10.0.0.1"), FqdnError::NumericTld { input: s("10.0.0.1"), label: s("1") });
        assert!(err("10.0.0.1").to_string().contains("IP addresses are not FQDNs"));
        assert!(matches!(err("example.123."), FqdnError::NumericTld { .. }));
        assert!(matches!(err("123"), FqdnError::NumericTld { .. }));
        assert!(matches!(err("::1"), FqdnError::Port { at: 0, .. }));
    }

    #[test]
    fn messages_are_short_single_lines() {
        let huge = format!("{}\n", "a".repeat(100_000));
        for input in [huge.as_str(), "a\u{2028}b", "a\u{202e}b.com", "a\"b", "ü\u{1b}[2J"] {
            let message = err(input).to_string();
            assert!(message.len() < 1_000, "{message}");
            assert!(!message.chars().any(|c| c.is_control() || c == '\u{2028}' || c == '\u{202e}'), "{message:?}");
        }
    }

    #[test]
    fn conversions() {
        let fqdn: Fqdn = "Example.COM.".parse().unwrap();
        assert_eq!(fqdn.as_str(), "example.com");
        assert_eq!(fqdn.as_ref(), "example.com");
        assert_eq!(fqdn.to_string(), "example.com");
        assert_eq!(Fqdn::try_from(s("Example.COM.")), Ok(fqdn.clone()));
        assert_eq!(Fqdn::try_from(s("münchen.de")).map(String::from), Ok(s("xn--mnchen-3ya.de")));
        assert_eq!(Fqdn::try_from(s("a b")), Err(FqdnError::Whitespace { input: s("a b"), ch: ' ', at: 1 }));
        assert_eq!(String::from(fqdn), "example.com");
    }

    #[test]
    fn deserialising_validates() {
        let de = |text: &str| Fqdn::deserialize::<StringDeserializer<DeError>>(s(text).into_deserializer());
        assert_eq!(de("Example.com").unwrap().as_str(), "example.com");
        let error = de("a.com\nshow map").unwrap_err().to_string();
        assert!(error.contains("control characters are not allowed"), "{error}");
    }

    /// A label that the ASCII rules accept (not punycode, which IDNA must vet).
    fn label() -> impl Strategy<Value = String> {
        "[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?"
            .prop_filter("not an A-label", |l| !l.get(..4).is_some_and(|p| p.eq_ignore_ascii_case("xn--")))
    }

    /// A valid name, possibly with a trailing dot.
    fn valid_name() -> impl Strategy<Value = String> {
        (prop::collection::vec(label(), 1..5), any::<bool>())
            .prop_map(|(labels, dot)| format!("{}{}", labels.join("."), if dot { "." } else { "" }))
            .prop_filter("fits", |n| n.trim_end_matches('.').len() <= MAX_LEN)
            .prop_filter("last label not numeric", |n| {
                let last = n.trim_end_matches('.').rsplit('.').next().unwrap_or("");
                !last.bytes().all(|b| b.is_ascii_digit())
            })
    }

    /// Strings close to host names, mixing in everything the rules care about.
    fn near_name() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<String>(),
            "[a-zA-Z0-9.\\-_ \t\r\n:@/*üßÜ例。．\u{ad}\u{200b}\u{85}\u{2028}]{0,70}",
            "([xX][nN]--)?[a-z0-9-]{0,12}(\\.([xX][nN]--)?[a-z0-9-]{1,12}){0,3}\\.?",
        ]
    }

    fn assert_canonical(name: &str) {
        assert!(name.bytes().all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'-')), "{name:?}");
        assert!(name.len() <= MAX_LEN, "{name:?}");
        for label in name.split('.') {
            assert!((1..=MAX_LABEL_LEN).contains(&label.len()), "{name:?}");
            assert!(!label.starts_with('-') && !label.ends_with('-'), "{name:?}");
        }
    }

    proptest! {
        #[test]
        fn parsed_names_are_canonical(input in near_name()) {
            match Fqdn::parse(&input) {
                Ok(fqdn) => assert_canonical(fqdn.as_str()),
                Err(error) => {
                    let message = error.to_string();
                    prop_assert!(!message.chars().any(char::is_control), "{:?}", message);
                }
            }
        }

        #[test]
        fn parse_is_idempotent(input in near_name()) {
            if let Ok(fqdn) = Fqdn::parse(&input) {
                prop_assert_eq!(Fqdn::parse(fqdn.as_str()), Ok(fqdn));
            }
        }

        #[test]
        fn valid_names_round_trip_lowercased(name in valid_name()) {
            let fqdn = Fqdn::parse(&name).unwrap();
            prop_assert_eq!(fqdn.as_str(), name.strip_suffix('.').unwrap_or(&name).to_ascii_lowercase());
        }

        #[test]
        fn inserted_separators_are_rejected(
            name in valid_name(),
            at in any::<prop::sample::Index>(),
            ch in prop::sample::select(vec!['\n', '\r', '\t', ' ', '@', '/', ':', '*']),
        ) {
            let mut input = name.clone();
            input.insert(at.index(name.len() + 1), ch);
            prop_assert!(Fqdn::parse(&input).is_err(), "{:?} accepted", input);
        }

        #[test]
        fn try_from_string_agrees_with_parse(input in near_name()) {
            let parsed = Fqdn::parse(&input);
            prop_assert_eq!(Fqdn::try_from(input.clone()), parsed.clone());
            if let Ok(fqdn) = parsed {
                prop_assert_eq!(Fqdn::try_from(String::from(fqdn.clone())), Ok(fqdn));
            }
        }
    }
}
