//! Secrets in text about to be stored: where they are, of what kind, and the
//! text with each one replaced by `[REDACTED:kind]`.
//!
//! Detected ([`Kind`]):
//! * tokens of a known shape, found anywhere: private key blocks (PEM, PGP),
//!   JSON Web Tokens, AWS access key ids, GitHub, GitLab and Slack tokens,
//!   Google API keys, and `api_key` for the other vendor prefixes (`sk-`,
//!   `sk_live_`, `whsec_`, `npm_`, `hf_`, `pypi-`, `SG.`, `dop_v1_`,
//!   `shpat_`, Telegram bot tokens); bearer tokens after `Bearer`;
//! * values stated as secrets: a random-looking value (letters and digits,
//!   16 characters or more) after a label such as `api_key=`, `token:`,
//!   `client secret is`; a password after `password:`, `pwd=`, `DB_PASSWORD=`,
//!   "my password is ..." (in words only when it looks like a password or
//!   is quoted), a PIN of 4 to 8 digits, the password in `scheme://user:pass@`;
//! * payment data: card numbers of 13 to 19 digits (contiguous, or in the
//!   usual groups of four, or 4-6-5 / 4-6-4) that pass the Luhn check and
//!   start as an issuer's numbers do; IBANs of a known country's length
//!   whose mod-97 check holds.
//!
//! Not detected: secrets with no shape and no label ("it's sunshine42"),
//! passwords of letters only stated in words without "my" or quotes,
//! unlabelled high-entropy strings (they look like hashes and ids), bank
//! account numbers that are not IBANs, lowercase IBANs, card numbers split
//! other than in the usual groups, and anything in a language other than
//! English labels.
//!
//! Invariants: detection is linear in the text (the `regex` crate, plus
//! bounded walks); found spans never overlap, are sorted, and fall on
//! character boundaries; [`redact`] is idempotent (a `[REDACTED:kind]`
//! marker is never itself detected).

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::LazyLock;

use regex::{Captures, Regex};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// What kind of secret a span holds; its name is what `[REDACTED:kind]` shows.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A PEM or PGP private key block, or a value labelled as a private key.
    PrivateKey,
    /// A JSON Web Token (`eyJ...`.`eyJ...`.signature).
    Jwt,
    /// An AWS access key id (`AKIA...`, `ASIA...`).
    AwsKey,
    /// A GitHub token (`ghp_`, `gho_`, `ghu_`, `ghs_`, `ghr_`, `github_pat_`).
    GithubToken,
    /// A GitLab token (`glpat-` and its kin).
    GitlabToken,
    /// A Slack token (`xoxb-`...) or incoming webhook URL.
    SlackToken,
    /// A Google API key (`AIza...`).
    GoogleApiKey,
    /// Another vendor's key by its prefix, or a random value labelled as a
    /// key, token or secret.
    ApiKey,
    /// The token after `Bearer`.
    BearerToken,
    /// A password or PIN stated as such, or the password of a URL.
    Password,
    /// A payment card number (Luhn-valid, an issuer's prefix and length).
    CardNumber,
    /// An International Bank Account Number (mod-97 valid).
    Iban,
}

impl Kind {
    /// Every kind, in declaration order.
    pub const ALL: [Kind; 12] = [
        Kind::PrivateKey,
        Kind::Jwt,
        Kind::AwsKey,
        Kind::GithubToken,
        Kind::GitlabToken,
        Kind::SlackToken,
        Kind::GoogleApiKey,
        Kind::ApiKey,
        Kind::BearerToken,
        Kind::Password,
        Kind::CardNumber,
        Kind::Iban,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::PrivateKey => "private_key",
            Kind::Jwt => "jwt",
            Kind::AwsKey => "aws_key",
            Kind::GithubToken => "github_token",
            Kind::GitlabToken => "gitlab_token",
            Kind::SlackToken => "slack_token",
            Kind::GoogleApiKey => "google_api_key",
            Kind::ApiKey => "api_key",
            Kind::BearerToken => "bearer_token",
            Kind::Password => "password",
            Kind::CardNumber => "card_number",
            Kind::Iban => "iban",
        }
    }

    /// The kind named `name` (as [`Kind::as_str`] writes it).
    pub fn parse(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == name)
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One secret: its kind and its byte range in the text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub kind: Kind,
    pub range: Range<usize>,
}

/// A text with its secrets replaced, and what was replaced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redacted {
    pub text: String,
    /// The secrets found in the original text, in order.
    pub found: Vec<Found>,
}

impl Redacted {
    /// How many secrets of each kind were replaced.
    pub fn counts(&self) -> BTreeMap<Kind, usize> {
        let mut counts = BTreeMap::new();
        for f in &self.found {
            *counts.entry(f.kind).or_insert(0) += 1;
        }
        counts
    }
}

/// The marker a secret of `kind` is replaced by.
pub fn marker(kind: Kind) -> String {
    format!("[REDACTED:{kind}]")
}

/// `text` with every detected secret replaced by its [`marker`].
pub fn redact(text: &str) -> Redacted {
    let found = detect(text);
    if found.is_empty() {
        return Redacted {
            text: text.to_owned(),
            found,
        };
    }
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    for f in &found {
        out.push_str(&text[at..f.range.start]);
        out.push_str(&marker(f.kind));
        at = f.range.end;
    }
    out.push_str(&text[at..]);
    Redacted { text: out, found }
}

/// The secrets in `text`, sorted, never overlapping. Detectors run from the
/// most specific (a vendor's prefix) to the most general (a label and a
/// value); a later span that overlaps an earlier one is dropped, so a
/// labelled `sk-...` key is reported as the prefix says.
pub fn detect(text: &str) -> Vec<Found> {
    // Kept spans by start. They never overlap, so the only one a candidate
    // can overlap is the last that starts before the candidate ends: one
    // lookup per candidate, however many secrets a long text holds.
    let mut kept: BTreeMap<usize, (usize, Kind)> = BTreeMap::new();
    let mut keep = |candidates: Vec<Found>| {
        for c in candidates {
            if c.range.is_empty() {
                continue;
            }
            let overlaps = kept
                .range(..c.range.end)
                .next_back()
                .is_some_and(|(_, (end, _))| *end > c.range.start);
            if !overlaps {
                kept.insert(c.range.start, (c.range.end, c.kind));
            }
        }
    };
    keep(private_key_blocks(text));
    keep(shaped_tokens(text));
    keep(ibans(text));
    keep(card_numbers(text));
    keep(bearer_tokens(text));
    keep(url_passwords(text));
    keep(passwords(text));
    keep(labelled_values(text));
    kept.into_iter()
        .map(|(start, (end, kind))| span(kind, start..end))
        .collect()
}

fn re(pattern: &str) -> Regex {
    Regex::new(pattern).expect("the secret patterns are valid regexes (a unit test compiles them)")
}

fn span(kind: Kind, range: Range<usize>) -> Found {
    Found { kind, range }
}

// ---------------------------------------------------------------------------
// Shapes found anywhere.

static PRIVATE_KEY: LazyLock<Regex> = LazyLock::new(|| {
    // An unterminated block (a key pasted in part) runs to the end.
    re(
        r"(?s)-----BEGIN [A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----.*?(?:-----END [A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----|\z)",
    )
});

fn private_key_blocks(text: &str) -> Vec<Found> {
    PRIVATE_KEY
        .find_iter(text)
        .map(|m| span(Kind::PrivateKey, m.range()))
        .collect()
}

/// Vendor token shapes, each with the kind it is.
static SHAPES: LazyLock<Vec<(Kind, Regex)>> = LazyLock::new(|| {
    vec![
        (
            Kind::Jwt,
            re(r"\beyJ[A-Za-z0-9_-]{5,}\.eyJ[A-Za-z0-9_-]{5,}\.(?:[A-Za-z0-9_-]{8,})?"),
        ),
        (Kind::AwsKey, re(r"\b(?:AKIA|ASIA|ABIA|ACCA)[A-Z0-9]{16}\b")),
        (
            Kind::GithubToken,
            re(r"\b(?:gh[pousr]_[A-Za-z0-9]{30,255}|github_pat_[A-Za-z0-9_]{40,255})\b"),
        ),
        (
            Kind::GitlabToken,
            re(r"\bgl(?:pat|dt|ptt|rt|oas|cbt)-[A-Za-z0-9_-]{20,}"),
        ),
        (
            Kind::SlackToken,
            re(
                r"\bxox[abposre]-[A-Za-z0-9-]{10,}|https://hooks\.slack\.com/services/[A-Za-z0-9/_-]{20,}",
            ),
        ),
        (Kind::GoogleApiKey, re(r"\bAIza[0-9A-Za-z_-]{35}")),
        (
            Kind::ApiKey,
            re(concat!(
                r"\bsk-[A-Za-z0-9_-]{20,}",
                r"|\b[rs]k_(?:live|test)_[A-Za-z0-9]{16,}",
                r"|\bwhsec_[A-Za-z0-9+/=]{20,}",
                r"|\bnpm_[A-Za-z0-9]{36}\b",
                r"|\bhf_[A-Za-z0-9]{30,}\b",
                r"|\bpypi-[A-Za-z0-9_-]{50,}",
                r"|\bSG\.[A-Za-z0-9_-]{16,}\.[A-Za-z0-9_-]{16,}",
                r"|\bdop_v1_[a-f0-9]{64}\b",
                r"|\bshp(?:at|ss|ca|pa)_[a-fA-F0-9]{32}\b",
                r"|\b[0-9]{8,10}:AA[A-Za-z0-9_-]{33}\b",
            )),
        ),
    ]
});

fn shaped_tokens(text: &str) -> Vec<Found> {
    let mut out = Vec::new();
    for (kind, pattern) in SHAPES.iter() {
        for m in pattern.find_iter(text) {
            // Kebab-case words can follow `sk-`; a key is random.
            if *kind == Kind::ApiKey && !looks_random(m.as_str()) {
                continue;
            }
            out.push(span(*kind, m.range()));
        }
    }
    out
}

static BEARER: LazyLock<Regex> = LazyLock::new(|| re(r"\b[Bb]earer\s+([A-Za-z0-9._~+/-]{16,}=*)"));

fn bearer_tokens(text: &str) -> Vec<Found> {
    BEARER
        .captures_iter(text)
        .filter_map(|c| c.get(1))
        .filter(|m| looks_random(m.as_str()))
        .map(|m| span(Kind::BearerToken, m.range()))
        .collect()
}

static URL_PASSWORD: LazyLock<Regex> =
    LazyLock::new(|| re(r"\b[A-Za-z][A-Za-z0-9+.-]*://[^\s:/@]+:([^\s/@]+)@"));

fn url_passwords(text: &str) -> Vec<Found> {
    URL_PASSWORD
        .captures_iter(text)
        .filter_map(|c| c.get(1))
        .filter(|m| !is_reference(m.as_str()) && !is_masked(m.as_str()))
        .map(|m| span(Kind::Password, m.range()))
        .collect()
}

// ---------------------------------------------------------------------------
// Values stated as secrets: a label, a separator, a value.

static PASSWORD: LazyLock<Regex> = LazyLock::new(|| {
    re(concat!(
        r"(?i)\b(?:[a-z0-9]+[_-])*",
        r"(?P<label>passwords?|passwd|passphrase|passcode|pwd|pw|pin(?:[ _-]?(?:code|number))?)\b",
        // "password for my bank account is ..."
        r"(?:\s+(?:for|to|of|on|at)\s+(?:[^\s:=]+\s+){0,3}?[^\s:=]+?)?",
        r#"["']?(?:\s*(?P<sym>:=|=>|->|=|:)\s*|\s+(?P<is>is|was|is now|is still|remains)\s+)"#,
        r#"(?:["'`“‘«](?P<quoted>[^"'`”’»\n]{1,128})["'`”’»]|(?P<value>[^\s"'`”’»]+))"#,
    ))
});

/// Words that follow "password is" or "password:" in ordinary sentences
/// about passwords and in code (types, placeholders), separated by spaces.
const NOT_A_PASSWORD: &str = "\
    a an the too very not now still also just only being required optional mandatory \
    needed missing empty blank none null nil unset set same different wrong right \
    incorrect correct invalid valid weak strong long short secure insecure safe unsafe \
    expired hidden masked encrypted hashed stored saved changed reset forgotten lost known \
    unknown secret private case sensitive good bad fine ok okay easy hard simple complex \
    complicated new old temporary default there here in on at for with without my your his \
    her our their its this that what which who how why when where written printed managed \
    shared used reused generated random unique useless protected locked ignored all any \
    some one two three four five six seven eight nine ten twelve enough policy manager \
    field prompt hint length rules protection string str text bool boolean int integer \
    number varchar char password passwd true false undefined redacted omitted removed \
    withheld example placeholder xxx xxxx **** tbd n/a na see ask check please must should \
    will can cannot could would may might always never usually often";

fn passwords(text: &str) -> Vec<Found> {
    let mut out = Vec::new();
    for c in PASSWORD.captures_iter(text) {
        let (range, quoted) = match (c.name("quoted"), c.name("value")) {
            (Some(q), _) => (q.range(), true),
            (None, Some(v)) => (trim_punctuation(text, v.range()), false),
            (None, None) => continue,
        };
        let value = &text[range.clone()];
        if accept_password(text, &c, value, quoted) {
            out.push(span(Kind::Password, range));
        }
    }
    out
}

fn accept_password(text: &str, c: &Captures<'_>, value: &str, quoted: bool) -> bool {
    let label = c
        .name("label")
        .map(|m| m.as_str().to_ascii_lowercase())
        .unwrap_or_default();
    if label.starts_with("pin") {
        return (4..=8).contains(&value.len()) && value.bytes().all(|b| b.is_ascii_digit());
    }
    if value.chars().count() < 4 || is_reference(value) || is_masked(value) {
        return false;
    }
    let lower = value.to_lowercase();
    if NOT_A_PASSWORD.split_whitespace().any(|w| w == lower) {
        return false;
    }
    if quoted || c.name("sym").is_some() || password_shaped(value) {
        return true;
    }
    // Stated in words, letters only: only "my/our password is WORD", and
    // not a word with an ordinary word's ending ("... is expiring").
    let start = c.get(0).map_or(0, |m| m.start());
    preceded_by_my(&text[..start])
        && value.chars().all(|ch| ch.is_alphabetic())
        && !["ing", "ed", "ly", "able", "ible"]
            .iter()
            .any(|end| lower.ends_with(end))
}

/// Whether one of the last two words of `before` is "my" or "our" ("my
/// wifi password is ...").
fn preceded_by_my(before: &str) -> bool {
    before
        .split(|ch: char| !ch.is_alphabetic())
        .filter(|w| !w.is_empty())
        .rev()
        .take(2)
        .any(|w| matches!(w.to_lowercase().as_str(), "my" | "our"))
}

/// Letters with digits or symbols, or mixed case past the first letter.
fn password_shaped(value: &str) -> bool {
    let digit = value.chars().any(|c| c.is_ascii_digit());
    let letter = value.chars().any(|c| c.is_alphabetic());
    let symbol = value
        .chars()
        .any(|c| !c.is_alphanumeric() && c != '-' && c != '\'');
    let inner_upper =
        value.chars().skip(1).any(|c| c.is_uppercase()) && value.chars().any(|c| c.is_lowercase());
    (digit && (letter || value.len() >= 6)) || symbol || inner_upper
}

static LABELLED: LazyLock<Regex> = LazyLock::new(|| {
    re(concat!(
        r"(?i)\b(?:[a-z0-9]+[_-])*(?P<label>",
        r"api[_ -]?keys?|apikey|api[_ -]?token|api[_ -]?secret",
        r"|access[_ -]?key(?:[_ -]?id)?|secret[_ -]?access[_ -]?key|secret[_ -]?key",
        r"|client[_ -]?secret|app[_ -]?secret|webhook[_ -]?secret|secret",
        r"|(?:access|auth|refresh|session|bearer|personal[_ -]access|bot|id)[_ -]?token|token",
        r"|private[_ -]?key|signing[_ -]?key|credentials?",
        r")\b",
        r#"["']?(?:\s*(?::=|=>|->|=|:)\s*|\s+(?:is|was)\s+)"#,
        r#"["'`“‘]?(?P<value>[A-Za-z0-9_\-./+=~]{16,})"#,
    ))
});

fn labelled_values(text: &str) -> Vec<Found> {
    let mut out = Vec::new();
    for c in LABELLED.captures_iter(text) {
        let (Some(label), Some(value)) = (c.name("label"), c.name("value")) else {
            continue;
        };
        let range = trim_punctuation(text, value.range());
        let value = &text[range.clone()];
        if value.len() < 16 || !looks_random(value) || value.contains("://") {
            continue;
        }
        let label = label.as_str().to_ascii_lowercase();
        let kind = if label.starts_with("private") {
            Kind::PrivateKey
        } else {
            Kind::ApiKey
        };
        out.push(span(kind, range));
    }
    out
}

// ---------------------------------------------------------------------------
// Payment data.

static DIGIT_RUN: LazyLock<Regex> = LazyLock::new(|| re(r"[0-9](?:[ -]?[0-9])*"));

fn card_numbers(text: &str) -> Vec<Found> {
    let mut out = Vec::new();
    for m in DIGIT_RUN.find_iter(text) {
        if m.as_str().len() < 13 {
            continue;
        }
        // Part of a longer token: a decimal, a version, an id, a phone number.
        let before = text[..m.start()].chars().next_back();
        if before.is_some_and(|c| c.is_alphanumeric() || "._/+-$€£#".contains(c)) {
            continue;
        }
        let after = &text[m.end()..];
        let mut rest = after.chars();
        match (rest.next(), rest.next()) {
            (Some(c), _) if c.is_alphanumeric() || c == '_' || c == '/' => continue,
            (Some('.' | ','), Some(d)) if d.is_ascii_digit() => continue,
            _ => {}
        }
        if let Some(len) = card_in_run(m.as_str()) {
            out.push(span(Kind::CardNumber, m.start()..m.start() + len));
        }
    }
    out
}

/// The byte length of the card number a run of digits starts with: the
/// whole run, or the run without one trailing group of at most 4 digits
/// (an expiry or CVC written after the number).
fn card_in_run(run: &str) -> Option<usize> {
    let separators: Vec<char> = run.chars().filter(|c| !c.is_ascii_digit()).collect();
    if separators.windows(2).any(|w| w[0] != w[1]) {
        return None;
    }
    let groups: Vec<&str> = run.split([' ', '-']).collect();
    let mut candidates = vec![groups.len()];
    if groups.len() > 1 && groups[groups.len() - 1].len() <= 4 {
        candidates.push(groups.len() - 1);
    }
    for n in candidates {
        let taken = &groups[..n];
        let digits: String = taken.concat();
        if valid_grouping(taken) && plausible_card(&digits, n > 1) && luhn(&digits) {
            let len = taken.iter().map(|g| g.len()).sum::<usize>() + n - 1;
            return Some(len);
        }
    }
    None
}

/// One block of 13-19 digits, groups of four (the last may be shorter), or
/// the 4-6-5 and 4-6-4 groupings of 15- and 14-digit cards.
fn valid_grouping(groups: &[&str]) -> bool {
    let lens: Vec<usize> = groups.iter().map(|g| g.len()).collect();
    let total: usize = lens.iter().sum();
    if !(13..=19).contains(&total) {
        return false;
    }
    match lens.as_slice() {
        [_] => true,
        [4, 6, 5] | [4, 6, 4] => true,
        [init @ .., last] => init.iter().all(|&l| l == 4) && (1..=4).contains(last),
        [] => false,
    }
}

/// An issuer's prefix with one of its lengths. A 13-digit Visa number is
/// accepted only when grouped: a bare 13-digit number is usually a barcode.
fn plausible_card(digits: &str, grouped: bool) -> bool {
    let len = digits.len();
    let prefix = |n: usize| -> u32 { digits[..n].parse().unwrap_or(0) };
    if digits.bytes().all(|b| b == digits.as_bytes()[0]) {
        return false;
    }
    match digits.as_bytes()[0] {
        b'4' => len == 16 || len == 19 || (len == 13 && grouped),
        b'5' => {
            let p2 = prefix(2);
            ((51..=55).contains(&p2) && len == 16)
                || ((p2 == 50 || (56..=59).contains(&p2)) && (16..=19).contains(&len))
        }
        b'2' => {
            let p4 = prefix(4);
            ((2221..=2720).contains(&p4) && len == 16)
                || ((2200..=2204).contains(&p4) && (16..=19).contains(&len))
        }
        b'3' => {
            let p2 = prefix(2);
            let p3 = prefix(3);
            let p4 = prefix(4);
            ((p2 == 34 || p2 == 37) && len == 15)
                || ((300..=305).contains(&p3) && (14..=19).contains(&len))
                || ((p2 == 36 || p2 == 38 || p2 == 39) && (14..=19).contains(&len))
                || ((3528..=3589).contains(&p4) && (16..=19).contains(&len))
        }
        b'6' => (16..=19).contains(&len),
        _ => false,
    }
}

fn luhn(digits: &str) -> bool {
    let mut sum = 0;
    for (i, b) in digits.bytes().rev().enumerate() {
        let mut d = u32::from(b - b'0');
        if i % 2 == 1 {
            d *= 2;
            if d > 9 {
                d -= 9;
            }
        }
        sum += d;
    }
    sum % 10 == 0
}

static IBAN_START: LazyLock<Regex> = LazyLock::new(|| re(r"\b[A-Z]{2}[0-9]{2}"));

fn ibans(text: &str) -> Vec<Found> {
    let mut out = Vec::new();
    for m in IBAN_START.find_iter(text) {
        let Some(len) = iban_length(&m.as_str()[..2]) else {
            continue;
        };
        // Walk `len` letters and digits, allowing single spaces between them.
        let mut chars = String::with_capacity(len);
        let mut end = m.start();
        let mut after_space = false;
        for (i, c) in text[m.start()..].char_indices() {
            if c.is_ascii_alphanumeric() {
                chars.push(c.to_ascii_uppercase());
                end = m.start() + i + 1;
                after_space = false;
                if chars.len() == len {
                    break;
                }
            } else if c == ' ' && !after_space && chars.len() >= 4 {
                after_space = true;
            } else {
                break;
            }
        }
        if chars.len() != len {
            continue;
        }
        if text[end..]
            .chars()
            .next()
            .is_some_and(|c| c.is_alphanumeric())
        {
            continue;
        }
        if iban_checksum_ok(&chars) {
            out.push(span(Kind::Iban, m.start()..end));
        }
    }
    out
}

fn iban_checksum_ok(iban: &str) -> bool {
    let rearranged = iban[4..].chars().chain(iban[..4].chars());
    let mut rem: u32 = 0;
    for c in rearranged {
        let value = match c.to_digit(36) {
            Some(v) => v,
            None => return false,
        };
        rem = if value < 10 {
            (rem * 10 + value) % 97
        } else {
            (rem * 100 + value) % 97
        };
    }
    rem == 1
}

/// The IBAN length of a country, for the countries that issue them
/// (`CCnn`: country code, length).
fn iban_length(country: &str) -> Option<usize> {
    const LENGTHS: &str = "\
        AD24 AE23 AL28 AT20 AZ28 BA20 BE16 BG22 BH22 BR29 BY28 CH21 CR22 CY28 \
        CZ24 DE22 DK18 DO28 EE20 EG29 ES24 FI18 FO18 FR27 GB22 GE22 GI23 GL18 \
        GR27 GT28 HR21 HU28 IE22 IL23 IQ23 IS26 IT27 JO30 KW30 KZ20 LB28 LC32 \
        LI21 LT20 LU20 LV21 MC27 MD24 ME22 MK19 MR27 MT31 MU30 NL18 NO15 PK24 \
        PL28 PS29 PT25 QA29 RO24 RS22 SA24 SC31 SE24 SI19 SK24 SM27 ST25 SV28 \
        TL23 TN24 TR26 UA29 VA22 VG24 XK20";
    LENGTHS
        .split_whitespace()
        .find(|entry| entry.get(..2) == Some(country))
        .and_then(|entry| entry.get(2..)?.parse().ok())
}

// ---------------------------------------------------------------------------
// Shared checks on values.

/// Letters and digits both, with the spread of a random string (Shannon
/// entropy of at least 3 bits per character): keys, not words or numbers.
fn looks_random(value: &str) -> bool {
    let letters = value.chars().filter(|c| c.is_ascii_alphabetic()).count();
    let digits = value.chars().filter(|c| c.is_ascii_digit()).count();
    letters > 0 && digits > 0 && entropy(value) >= 3.0
}

fn entropy(value: &str) -> f64 {
    let mut counts: BTreeMap<char, usize> = BTreeMap::new();
    for c in value.chars() {
        *counts.entry(c).or_insert(0) += 1;
    }
    let n = value.chars().count() as f64;
    counts
        .values()
        .map(|&k| {
            let p = k as f64 / n;
            -p * p.log2()
        })
        .sum()
}

/// A reference to a secret kept elsewhere (`$DB_PASSWORD`, `${...}`,
/// `{{ vault }}`, `<password>`, `getenv(...)`), a type (`&str`), or a
/// marker already in place.
fn is_reference(value: &str) -> bool {
    value.starts_with(['$', '%', '{', '<', '[', '&'])
        || value.contains('(')
        || value.starts_with("process.env")
        || value.starts_with("os.environ")
}

/// Stars, dots or x's: a secret already hidden.
fn is_masked(value: &str) -> bool {
    value
        .chars()
        .all(|c| matches!(c, '*' | '•' | '.' | 'x' | 'X' | '#'))
}

/// `range` without trailing sentence punctuation.
fn trim_punctuation(text: &str, range: Range<usize>) -> Range<usize> {
    let trimmed = text[range.clone()].trim_end_matches(['.', ',', ';', ':', ')', ']', '}']);
    range.start..range.start + trimmed.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(text: &str) -> Vec<Kind> {
        detect(text).into_iter().map(|f| f.kind).collect()
    }

    #[test]
    fn every_pattern_compiles() {
        for pattern in [&PRIVATE_KEY, &BEARER, &URL_PASSWORD, &PASSWORD, &LABELLED] {
            LazyLock::force(pattern);
        }
        assert_eq!(SHAPES.len(), 7);
        assert!(DIGIT_RUN.is_match("1"));
        assert!(IBAN_START.is_match("DE89"));
    }

    #[test]
    fn checksums_decide_cards_and_ibans() {
        assert_eq!(
            kinds("card 4111 1111 1111 1111 exp 12/29"),
            [Kind::CardNumber]
        );
        assert_eq!(kinds("card:4111111111111111"), [Kind::CardNumber]);
        assert!(kinds("v4111111111111111 1.4111111111111111 +4111111111111111").is_empty());
        assert!(kinds("card 4111 1111 1111 1112").is_empty(), "Luhn fails");
        assert_eq!(kinds("IBAN DE89 3704 0044 0532 0130 00."), [Kind::Iban]);
        assert!(
            kinds("IBAN DE89 3704 0044 0532 0130 01").is_empty(),
            "mod 97 fails"
        );
    }

    #[test]
    fn redaction_keeps_the_label_and_is_idempotent() {
        let once = redact("password: hunter22, key sk-proj-A1b2C3d4E5f6G7h8I9j0K1l2");
        assert_eq!(
            once.text,
            "password: [REDACTED:password], key [REDACTED:api_key]"
        );
        assert_eq!(redact(&once.text).text, once.text);
        assert!(redact(&once.text).found.is_empty());
    }

    #[test]
    fn overlapping_candidates_keep_the_most_specific() {
        let text = "api_key=sk-proj-A1b2C3d4E5f6G7h8I9j0K1l2 and token: ghp_A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8";
        assert_eq!(kinds(text), [Kind::ApiKey, Kind::GithubToken]);
        let many = "card 4111 1111 1111 1111. ".repeat(2000);
        let found = detect(&many);
        assert_eq!(found.len(), 2000);
        assert!(found.windows(2).all(|w| w[0].range.end <= w[1].range.start));
    }

    #[test]
    fn spans_fall_on_character_boundaries_in_any_text() {
        let text = "mot de passe: é€😀x9 password: ünïcödé9 “token: Abcdefgh12345678ü”";
        for f in detect(text) {
            assert!(text.is_char_boundary(f.range.start) && text.is_char_boundary(f.range.end));
        }
    }
}
