//! Who may see and launch a blueprint: its access rules (shared/spec/portal.md §2.4).
//!
//! A rule names a domain or an address; a blueprint with rules is for the callers any of them matches (OR), one
//! without rules is for every member. Matching is exact and ignores case: both sides are lower-cased when parsed.
//! A domain rule matches that domain only: `company.com` does not match `ada@eu.company.com`. Internationalised
//! domains are compared as the bytes of their ASCII (punycode, `xn--`) form, which is the only form an [`Email`] can
//! hold; nothing is converted.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::values::{string_value, InvalidValue};
use crate::Email;

/// Most rules a blueprint may have.
pub const MAX_ACL_RULES: usize = 100;

string_value!(
    /// The domain of a domain rule: lower-case LDH labels separated by dots, without `@`, wildcard or trailing dot.
    EmailDomain
);

impl EmailDomain {
    /// Trimmed and lower-cased; 1 to 253 characters; dot-separated labels of 1 to 63 `a-z 0-9 -`, neither starting
    /// nor ending with `-`. Refused with the reason: a leading `@`, a trailing dot (`company.com.` would never match
    /// an address), a wildcard (rules match one domain exactly), characters outside ASCII (write the punycode form).
    pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
        const FIELD: &str = "acl.value";
        let domain = raw.trim().to_ascii_lowercase();
        if domain.is_empty() || domain.len() > 253 {
            return Err(InvalidValue::new(FIELD, "a domain has 1 to 253 characters"));
        }
        if domain.starts_with('@') {
            return Err(InvalidValue::new(FIELD, "a domain rule names the domain without '@' (company.com)"));
        }
        if domain.ends_with('.') {
            return Err(InvalidValue::new(FIELD, "a domain rule has no trailing dot"));
        }
        if domain.contains('*') {
            return Err(InvalidValue::new(FIELD, "a domain rule matches one domain exactly: no wildcards"));
        }
        if !domain.is_ascii() {
            return Err(InvalidValue::new(FIELD, "write an internationalised domain in its ASCII (xn--) form"));
        }
        let label_ok = |label: &str| {
            !label.is_empty()
                && label.len() <= 63
                && label.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        };
        if !domain.split('.').all(label_ok) {
            return Err(InvalidValue::new(
                FIELD,
                "a domain is dot-separated labels of a-z, 0-9 and '-' (1 to 63 each, no '-' first or last)",
            ));
        }
        Ok(Self(domain))
    }
}

/// One access rule.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "type", content = "value", rename_all = "snake_case")]
pub enum AclRule {
    /// Every address at this domain (exactly; not its subdomains).
    Domain(EmailDomain),
    /// This address.
    Email(Email),
}

impl AclRule {
    /// A rule from the API's `{type, value}`: `type` is `domain` or `email`.
    pub fn parse(kind: &str, value: &str) -> Result<Self, InvalidValue> {
        match kind {
            "domain" => EmailDomain::parse(value).map(AclRule::Domain),
            "email" => Email::parse(value)
                .map(AclRule::Email)
                .map_err(|error| InvalidValue::new("acl.value", error.to_string())),
            _ => Err(InvalidValue::new("acl.type", "a rule's type is domain or email")),
        }
    }

    /// Whether the rule matches `email`.
    pub fn matches(&self, email: &Email) -> bool {
        self.matches_split(email, email_domain(email))
    }

    /// [`matches`](Self::matches) with the address's domain found once for many rules.
    fn matches_split(&self, email: &Email, domain_of_email: &str) -> bool {
        match self {
            AclRule::Email(rule) => rule == email,
            AclRule::Domain(domain) => domain_of_email == domain.as_str(),
        }
    }
}

/// The part of an address after its last `@` (an `Email` always has one).
fn email_domain(email: &Email) -> &str {
    email.as_str().rsplit_once('@').map_or("", |(_, domain)| domain)
}

impl fmt::Display for AclRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AclRule::Domain(domain) => write!(f, "domain {domain}"),
            AclRule::Email(email) => write!(f, "email {email}"),
        }
    }
}

/// A blueprint's rules, in the order they were added: at most [`MAX_ACL_RULES`], none twice.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Acl(Vec<AclRule>);

impl Acl {
    /// Checks a whole list (an admin replacing the rules): the count and that no rule is there twice.
    pub fn new(rules: Vec<AclRule>) -> Result<Self, InvalidValue> {
        if rules.len() > MAX_ACL_RULES {
            return Err(InvalidValue::new("acl", format!("at most {MAX_ACL_RULES} rules")));
        }
        for (i, rule) in rules.iter().enumerate() {
            if rules[..i].contains(rule) {
                return Err(InvalidValue::new("acl", format!("the rule {rule} is listed twice")));
            }
        }
        Ok(Self(rules))
    }

    /// No rules: every member.
    pub fn open() -> Self {
        Self::default()
    }

    /// Whether `email` may see the blueprint: no rules, or any rule matches.
    pub fn allows(&self, email: &Email) -> bool {
        // The domain is found once, not once per rule (a catalog asks this of every listed blueprint).
        let domain = email_domain(email);
        self.0.is_empty() || self.0.iter().any(|rule| rule.matches_split(email, domain))
    }

    /// The rules, in order.
    pub fn rules(&self) -> &[AclRule] {
        &self.0
    }

    /// Whether there are no rules.
    pub fn is_open(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `rule` is among the rules.
    pub fn contains(&self, rule: &AclRule) -> bool {
        self.0.contains(rule)
    }

    pub(crate) fn push(&mut self, rule: AclRule) {
        self.0.push(rule);
    }

    pub(crate) fn remove(&mut self, rule: &AclRule) {
        self.0.retain(|kept| kept != rule);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn email(raw: &str) -> Email {
        Email::parse(raw).expect("test addresses are valid")
    }

    fn domain(raw: &str) -> AclRule {
        AclRule::parse("domain", raw).expect("test domains are valid")
    }

    /// Rules written `type value`.
    fn rules(specs: &[&str]) -> Acl {
        let parsed = specs.iter().map(|spec| {
            let (kind, value) = spec.split_once(' ').expect("type value");
            AclRule::parse(kind, value).expect("test rules are valid")
        });
        Acl::new(parsed.collect()).expect("a valid list")
    }

    #[test]
    fn the_allow_table() {
        const COMPANY: &str = "domain company.com";
        const EU: &str = "domain eu.company.com";
        const GRACE: &str = "email Grace@Partner.io";
        const PUNYCODE: &str = "domain xn--bcher-kva.example";
        #[rustfmt::skip]
        let table: &[(&[&str], &str, bool)] = &[
            // No rules: every member.
            (&[], "anyone@anywhere.org", true),
            // Domain rules: exact domain, any case on either side.
            (&[COMPANY], "ada@company.com", true),
            (&[COMPANY], "Ada@COMPANY.com", true),
            (&["domain Company.COM"], "ada@company.com", true),
            // ... not its subdomains, parents, look-alikes or the domain as a local part.
            (&[COMPANY], "ada@eu.company.com", false),
            (&[EU], "ada@company.com", false),
            (&[EU], "ada@eu.company.com", true),
            (&[COMPANY], "ada@evilcompany.com", false),
            (&[COMPANY], "ada@company.com.evil.org", false),
            (&[COMPANY], "company.com@evil.org", false),
            // Email rules: the exact address, any case.
            (&[GRACE], "grace@partner.io", true),
            (&[GRACE], "GRACE@partner.IO", true),
            (&[GRACE], "grace2@partner.io", false),
            (&[GRACE], "other@partner.io", false),
            // OR.
            (&[COMPANY, GRACE], "grace@partner.io", true),
            (&[COMPANY, GRACE], "ada@company.com", true),
            (&[COMPANY, GRACE], "bob@elsewhere.net", false),
            // IDN: the punycode form's bytes, nothing converted.
            (&[PUNYCODE], "ada@xn--bcher-kva.example", true),
            (&[PUNYCODE], "ada@XN--BCHER-KVA.example", true),
            (&[PUNYCODE], "ada@bcher-kva.example", false),
        ];
        for (specs, address, allowed) in table {
            assert_eq!(rules(specs).allows(&email(address)), *allowed, "{specs:?} {address}");
        }
    }

    #[test]
    fn rules_then_none_is_open_again() {
        let mut list = rules(&["domain company.com"]);
        assert!(!list.allows(&email("bob@elsewhere.net")));
        list.remove(&domain("company.com"));
        assert!(list.is_open() && list.allows(&email("bob@elsewhere.net")));
    }

    #[test]
    fn domains_are_checked_with_the_reason() {
        for good in ["company.com", "localhost", "a-b.c0.io", "xn--bcher-kva.example", " Company.COM "] {
            assert!(EmailDomain::parse(good).is_ok(), "{good}");
        }
        let reason = |raw: &str| EmailDomain::parse(raw).expect_err(raw);
        assert!(reason("company.com.").reason.contains("trailing dot"));
        assert!(reason("@company.com").reason.contains("'@'"));
        assert!(reason("*.company.com").reason.contains("wildcards"));
        assert!(reason("bücher.example").reason.contains("xn--"));
        for bad in [
            "",
            ".company.com",
            "company..com",
            "-company.com",
            "company-.com",
            "comp_any.com",
            "comp any.com",
            "company.com\0",
            "company.com\n.evil",
            "ada@company.com",
            &format!("{}.com", "a".repeat(64)),
            // 305 characters, every label short enough.
            &format!("{}.com", vec!["a".repeat(60); 5].join(".")),
        ] {
            assert_eq!(reason(bad).field, "acl.value", "{bad:?}");
        }
    }

    #[test]
    fn rules_parse_from_type_and_value() {
        assert_eq!(AclRule::parse("email", " Ada@Example.com"), Ok(AclRule::Email(email("ada@example.com"))));
        assert_eq!(AclRule::parse("email", "not-an-address").map_err(|e| e.field), Err("acl.value"));
        assert_eq!(AclRule::parse("email", "ada@exa\0mple.com").map_err(|e| e.field), Err("acl.value"));
        assert_eq!(AclRule::parse("group", "eng").map_err(|e| e.field), Err("acl.type"));
        assert_eq!(AclRule::parse("Domain", "company.com").map_err(|e| e.field), Err("acl.type"));
    }

    #[test]
    fn lists_are_bounded_and_without_repeats() {
        let rules: Vec<AclRule> = (0..MAX_ACL_RULES).map(|i| domain(&format!("d{i}.example"))).collect();
        assert!(Acl::new(rules.clone()).is_ok());
        let mut too_many = rules;
        too_many.push(domain("one-more.example"));
        assert_eq!(Acl::new(too_many).map_err(|e| e.field), Err("acl"));
        // Case folds at parse, so these two are the same rule.
        assert_eq!(Acl::new(vec![domain("company.com"), domain("COMPANY.com")]).map_err(|e| e.field), Err("acl"));
    }

    #[test]
    fn rules_serialise_as_type_and_value() {
        assert_eq!(
            serde_json::to_value(rules(&["domain company.com", "email ada@x.io"])).expect("serialises"),
            serde_json::json!([{"type": "domain", "value": "company.com"}, {"type": "email", "value": "ada@x.io"}])
        );
    }
}
