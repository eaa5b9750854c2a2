//! The validated values a publish request is made of. Parsing is the only way to build them, so an invalid value
//! never reaches an event.

use serde::{Deserialize, Serialize};

use crate::values::{identifier, string_value};
// Shared with the other aggregates since blueprints got their own (`crate::values`); re-exported so that every
// `domain::publishing::{values::text, BlueprintKey, InvalidValue}` keeps working.
pub use crate::values::{text, BlueprintKey, InvalidValue};

/// Labels that can never be published to: they name the organisation's own infrastructure or invite phishing.
pub const RESERVED_SUBDOMAINS: &[&str] = &[
    "admin",
    "api",
    "app",
    "apps",
    "assets",
    "auth",
    "autoconfig",
    "autodiscover",
    "blog",
    "cdn",
    "console",
    "dashboard",
    "dev",
    "dns",
    "docs",
    "ftp",
    "gatehouse",
    "git",
    "help",
    "imap",
    "internal",
    "localhost",
    "login",
    "mail",
    "mx",
    "ns",
    "ns1",
    "ns2",
    "pop",
    "portal",
    "preview",
    "root",
    "smtp",
    "sso",
    "static",
    "status",
    "support",
    "webmail",
    "www",
];

string_value!(
    /// The DNS label an app is published at (`my-app` → `my-app.<org domain>`).
    Subdomain
);
string_value!(
    /// A git commit id: 40 (SHA-1) or 64 (SHA-256) lower-case hex digits.
    CommitId
);
string_value!(
    /// The id of a workspace (its control plane's environment id).
    WorkspaceId
);
string_value!(
    /// The id of a publish request (a UUID chosen by the API).
    RequestId
);

impl Subdomain {
    /// A DNS label: 1–63 characters of `a-z`, `0-9` and `-`, neither starting nor ending with `-`, and not one of
    /// [`RESERVED_SUBDOMAINS`]. Upper case is refused rather than folded, so that what the builder typed is what is
    /// published.
    pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
        const FIELD: &str = "subdomain";
        if raw.is_empty() || raw.len() > 63 {
            return Err(InvalidValue::new(FIELD, "a subdomain has 1 to 63 characters"));
        }
        if !raw.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') {
            return Err(InvalidValue::new(FIELD, "a subdomain contains only a-z, 0-9 and '-'"));
        }
        if raw.starts_with('-') || raw.ends_with('-') {
            return Err(InvalidValue::new(FIELD, "a subdomain neither starts nor ends with '-'"));
        }
        if raw.len() >= 4 && &raw[2..4] == "--" {
            // `xn--` and friends: punycode and other reserved label forms (RFC 5891 §4.2.3.1).
            return Err(InvalidValue::new(FIELD, "a subdomain has no '--' in its third and fourth characters"));
        }
        if RESERVED_SUBDOMAINS.contains(&raw) {
            return Err(InvalidValue::new(FIELD, format!("'{raw}' is reserved")));
        }
        Ok(Self(raw.to_string()))
    }
}

impl CommitId {
    /// 40 or 64 hex digits; upper case is accepted and stored lower-cased.
    pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
        if !(raw.len() == 40 || raw.len() == 64) || !raw.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(InvalidValue::new("commit_id", "a commit id is 40 or 64 hexadecimal digits"));
        }
        Ok(Self(raw.to_ascii_lowercase()))
    }
}

impl WorkspaceId {
    /// See [`identifier`]'s rule.
    pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
        identifier("workspace_id", raw).map(Self)
    }
}

impl RequestId {
    /// Any identifier-shaped string (the API only ever makes UUIDs).
    pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
        identifier("request_id", raw).map(Self)
    }
}

/// Most characters a publish message may have.
pub const MAX_MESSAGE_CHARS: usize = 4_000;
/// Most characters of a review's reason or feedback.
pub const MAX_REASON_CHARS: usize = 2_000;
/// The largest patch any configuration may allow; the configured cap is at most this.
pub const MAX_PATCH_BYTES: usize = 1024 * 1024;

/// What a publish would change, as the builder's diff preview summarised it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiffSummary {
    /// Files changed.
    pub files: u32,
    /// Lines added.
    pub insertions: u64,
    /// Lines removed.
    pub deletions: u64,
    /// The unified diff itself, when it fits under the configured cap.
    pub patch: Option<String>,
    /// Whether `patch` is only the beginning of the diff (cut at the cap, at a line end).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub patch_truncated: bool,
}

impl DiffSummary {
    /// Checks the patch against `max_patch_bytes` (itself capped at [`MAX_PATCH_BYTES`]).
    pub fn new(
        files: u32,
        insertions: u64,
        deletions: u64,
        patch: Option<String>,
        max_patch_bytes: usize,
    ) -> Result<Self, InvalidValue> {
        let cap = max_patch_bytes.min(MAX_PATCH_BYTES);
        if let Some(patch) = &patch {
            if patch.len() > cap {
                return Err(InvalidValue::new(
                    "diff.patch",
                    format!("the patch has {} bytes; at most {cap} are accepted", patch.len()),
                ));
            }
            if patch.contains('\0') {
                return Err(InvalidValue::new("diff.patch", "the patch must not contain NUL bytes"));
            }
        }
        // Stored and shown as signed 64-bit integers: a larger count is refused, never clamped.
        if i64::try_from(insertions).is_err() {
            return Err(InvalidValue::new("diff.insertions", format!("at most {} lines", i64::MAX)));
        }
        if i64::try_from(deletions).is_err() {
            return Err(InvalidValue::new("diff.deletions", format!("at most {} lines", i64::MAX)));
        }
        if files == 0 && (insertions > 0 || deletions > 0) {
            return Err(InvalidValue::new("diff.files", "lines changed in zero files"));
        }
        Ok(Self {
            files,
            insertions,
            deletions,
            patch: patch.filter(|patch| !patch.is_empty()),
            patch_truncated: false,
        })
    }

    /// Marks the patch as only the beginning of the diff.
    pub fn truncated(self, patch_truncated: bool) -> Self {
        Self { patch_truncated, ..self }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subdomains_are_dns_labels_that_are_not_reserved() {
        for good in ["a", "my-app", "app2", "0abc", &"x".repeat(63)] {
            assert!(Subdomain::parse(good).is_ok(), "{good}");
        }
        for bad in
            ["", "-app", "app-", "My-App", "my_app", "my.app", "xn--caf-dma", "www", "admin", "é", &"x".repeat(64)]
        {
            let error = Subdomain::parse(bad).expect_err(bad);
            assert_eq!(error.field, "subdomain");
        }
    }

    #[test]
    fn commit_ids_are_full_hex_hashes() {
        let sha1 = "0123456789abcdef0123456789ABCDEF01234567";
        assert_eq!(CommitId::parse(sha1).map(|id| id.0), Ok(sha1.to_ascii_lowercase()));
        assert!(CommitId::parse(&"a".repeat(64)).is_ok());
        for bad in ["", "abc1234", &"g".repeat(40), &"a".repeat(41)] {
            assert_eq!(CommitId::parse(bad).map_err(|error| error.field), Err("commit_id"));
        }
    }

    #[test]
    fn identifiers_and_text_are_bounded() {
        assert!(WorkspaceId::parse("env-1234_abc.d").is_ok());
        for bad in ["", "-x", "a b", "a/b", &"a".repeat(129)] {
            assert!(WorkspaceId::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(text("message", "  ship it \n", 10).as_deref(), Ok("ship it"));
        assert!(text("message", "   ", 10).is_err());
        assert!(text("message", "12345678901", 10).is_err());
        assert!(text("message", "bell\u{7}", 10).is_err());
        // Newlines and tabs are the only control characters text may hold: not CR, DEL or NEL.
        assert_eq!(text("message", "a\n\tb", 10).as_deref(), Ok("a\n\tb"));
        for bad in ["a\rb", "a\r\nb", "a\u{7f}b", "a\u{85}b", "a\u{0}b"] {
            assert!(text("message", bad, 10).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn patches_are_capped() {
        assert!(DiffSummary::new(1, 1, 0, Some("x".repeat(10)), 10).is_ok());
        assert_eq!(DiffSummary::new(1, 1, 0, Some("x".repeat(11)), 10).map_err(|e| e.field), Err("diff.patch"));
        assert!(DiffSummary::new(1, 1, 0, Some("x".repeat(MAX_PATCH_BYTES + 1)), usize::MAX).is_err());
        assert_eq!(DiffSummary::new(1, 0, 0, Some(String::new()), 10).map(|diff| diff.patch), Ok(None));
        assert!(DiffSummary::new(0, 3, 0, None, 10).is_err());
    }

    #[test]
    fn line_counts_beyond_i64_are_refused_not_clamped() {
        let max = i64::MAX as u64;
        assert_eq!(
            DiffSummary::new(1, max, max, None, 10).map(|diff| (diff.insertions, diff.deletions)),
            Ok((max, max))
        );
        assert_eq!(DiffSummary::new(1, max + 1, 0, None, 10).map_err(|e| e.field), Err("diff.insertions"));
        assert_eq!(DiffSummary::new(1, 0, u64::MAX, None, 10).map_err(|e| e.field), Err("diff.deletions"));
    }
}
