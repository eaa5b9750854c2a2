//! Naming templates: how the control plane names a workspace's project and environment, e.g. `rde-{user}-{blueprint}`
//! → `rde-alice-frontend-starter`. Pure: the random part is the caller's.

use crate::values::{line, string_value, InvalidValue};
use crate::Email;

/// Most characters of a template.
pub const MAX_TEMPLATE_CHARS: usize = 200;
/// Most characters of a rendered name: a DNS label (RFC 1123), which Kubernetes namespaces and most control planes'
/// names must be.
pub const MAX_NAME_CHARS: usize = 63;
/// The placeholders a template may use.
pub const PLACEHOLDERS: [&str; 4] = ["user", "blueprint", "random", "name"];

string_value!(
    /// A naming template: one line of text and placeholders (`{user}`, `{blueprint}`, `{random}`, `{name}`).
    NameTemplate
);

/// What a template's placeholders stand for when a workspace is made.
#[derive(Debug, Clone, Copy)]
pub struct TemplateValues<'a> {
    /// The workspace's owner: `{user}` is the part of the address before `@`.
    pub owner: &'a Email,
    /// `{blueprint}`: the blueprint's display name.
    pub blueprint: &'a str,
    /// `{random}`: random alphanumerics the caller drew (the domain has no randomness).
    pub random: &'a str,
    /// `{name}`: the workspace's name, as the builder chose it.
    pub name: &'a str,
}

/// A template rendered to nothing: every character of the template and its values was dropped by sanitising.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the naming template {0} renders to an empty name for these values")]
pub struct EmptyName(pub NameTemplate);

/// One piece of a template.
enum Piece<'a> {
    Literal(&'a str),
    Placeholder(&'a str),
}

/// Splits a template into pieces, or says why it cannot be split.
fn pieces(template: &str) -> Result<Vec<Piece<'_>>, String> {
    let mut pieces = Vec::new();
    let mut rest = template;
    while !rest.is_empty() {
        match rest.find(['{', '}']) {
            None => {
                pieces.push(Piece::Literal(rest));
                rest = "";
            }
            Some(at) if rest.as_bytes()[at] == b'}' => return Err("a '}' without its '{'".to_string()),
            Some(at) => {
                if at > 0 {
                    pieces.push(Piece::Literal(&rest[..at]));
                }
                let inside = &rest[at + 1..];
                let Some(end) = inside.find(['{', '}']).filter(|end| inside.as_bytes()[*end] == b'}') else {
                    return Err("a '{' without its '}'".to_string());
                };
                pieces.push(Piece::Placeholder(&inside[..end]));
                rest = &inside[end + 1..];
            }
        }
    }
    Ok(pieces)
}

impl NameTemplate {
    /// One line of at most [`MAX_TEMPLATE_CHARS`] characters whose braces enclose only [`PLACEHOLDERS`], and that
    /// can render to something (a template of literals alone that sanitise to nothing cannot). `field` names the
    /// template (`naming.project`, `naming.environment`).
    pub fn parse(field: &'static str, raw: &str) -> Result<Self, InvalidValue> {
        let checked = line(field, raw, MAX_TEMPLATE_CHARS)?;
        let pieces = pieces(&checked).map_err(|reason| InvalidValue::new(field, reason))?;
        let mut any_placeholder = false;
        for piece in &pieces {
            if let Piece::Placeholder(name) = piece {
                if !PLACEHOLDERS.contains(name) {
                    return Err(InvalidValue::new(
                        field,
                        format!("unknown placeholder {{{name}}}: use {{user}}, {{blueprint}}, {{random}} or {{name}}"),
                    ));
                }
                any_placeholder = true;
            }
        }
        if !any_placeholder && sanitise(&checked).is_empty() {
            return Err(InvalidValue::new(field, "renders to an empty name: use letters, digits or a placeholder"));
        }
        Ok(Self(checked))
    }

    /// A template this crate wrote itself (the defaults).
    pub(crate) fn from_trusted(raw: &str) -> Self {
        Self(raw.to_string())
    }

    /// The name for `values`: placeholders replaced, then the whole [`sanitise`]d. A brace that does not enclose a
    /// known placeholder (only a template read from history under other rules could have one) stays literal text,
    /// which sanitising turns into a separator.
    pub fn render(&self, values: &TemplateValues<'_>) -> Result<String, EmptyName> {
        let mut filled = String::new();
        match pieces(&self.0) {
            Ok(pieces) => {
                for piece in pieces {
                    match piece {
                        Piece::Literal(text) => filled.push_str(text),
                        Piece::Placeholder("user") => {
                            filled.push_str(values.owner.as_str().split('@').next().unwrap_or_default());
                        }
                        Piece::Placeholder("blueprint") => filled.push_str(values.blueprint),
                        Piece::Placeholder("random") => filled.push_str(values.random),
                        Piece::Placeholder("name") => filled.push_str(values.name),
                        Piece::Placeholder(other) => {
                            filled.push('{');
                            filled.push_str(other);
                            filled.push('}');
                        }
                    }
                }
            }
            Err(_) => filled.push_str(&self.0),
        }
        let name = sanitise(&filled);
        if name.is_empty() {
            return Err(EmptyName(self.clone()));
        }
        Ok(name)
    }
}

/// Lower-case ASCII letters and digits, runs of anything else turned into one hyphen, no hyphen first or last, at most
/// [`MAX_NAME_CHARS`] characters (cut, then any hyphen the cut left last dropped). Letters outside ASCII are not
/// transliterated: `Café` becomes `caf`.
pub fn sanitise(raw: &str) -> String {
    let mut name = String::with_capacity(raw.len().min(MAX_NAME_CHARS));
    let mut separated = false;
    for c in raw.chars() {
        if c.is_ascii_alphanumeric() {
            if separated && !name.is_empty() {
                name.push('-');
            }
            separated = false;
            name.push(c.to_ascii_lowercase());
            if name.len() >= MAX_NAME_CHARS {
                break;
            }
        } else {
            separated = true;
        }
    }
    name.truncate(MAX_NAME_CHARS);
    while name.ends_with('-') {
        name.pop();
    }
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template(raw: &str) -> NameTemplate {
        NameTemplate::parse("naming.project", raw).expect("a valid template")
    }

    fn render(raw: &str, owner: &str, blueprint: &str, random: &str, name: &str) -> Result<String, EmptyName> {
        let owner = Email::parse(owner).expect("valid");
        template(raw).render(&TemplateValues { owner: &owner, blueprint, random, name })
    }

    #[test]
    fn sanitising_leaves_lower_case_alphanumerics_and_single_inner_hyphens() {
        let long = "a".repeat(100);
        let x63 = "x".repeat(63);
        let cut_at_hyphen = format!("{}-bcd", "a".repeat(62));
        let table: &[(&str, &str)] = &[
            ("rde-alice-Frontend Starter", "rde-alice-frontend-starter"),
            ("ABC", "abc"),
            ("--a--b--", "a-b"),
            ("a__b..c  d", "a-b-c-d"),
            ("  lead and trail  ", "lead-and-trail"),
            ("Café Crème", "caf-cr-me"),
            ("日本", ""),
            ("---", ""),
            ("", ""),
            ("a\0b\u{7}c", "a-b-c"),
            (x63.as_str(), x63.as_str()),
            (long.as_str(), &long[..63]),
            // Cut at 63, where a hyphen would be last: dropped.
            (cut_at_hyphen.as_str(), &cut_at_hyphen[..62]),
            ("0-9", "0-9"),
        ];
        for (raw, expected) in table {
            let name = sanitise(raw);
            assert_eq!(name, *expected, "{raw:?}");
            assert!(name.len() <= MAX_NAME_CHARS);
            assert!(!name.starts_with('-') && !name.ends_with('-') && !name.contains("--"), "{name}");
        }
    }

    #[test]
    fn templates_render_their_placeholders() {
        let table: &[(&str, &str)] = &[
            ("rde-{user}-{blueprint}", "rde-alice-frontend-starter"),
            ("{name}", "my-app"),
            ("{user}-{name}-{random}", "alice-my-app-x7k2p9"),
            ("{random}{random}", "x7k2p9x7k2p9"),
            ("ws_{name}.{random}", "ws-my-app-x7k2p9"),
        ];
        for (raw, expected) in table {
            assert_eq!(
                render(raw, "Alice@Example.com", "Frontend Starter", "x7k2p9", "My App!").as_deref(),
                Ok(*expected),
                "{raw}"
            );
        }
        // Placeholders are case-sensitive: {NAME} is unknown and refused.
        assert!(NameTemplate::parse("naming.project", "ws_{NAME}").is_err());
    }

    #[test]
    fn the_user_is_the_part_before_the_at() {
        assert_eq!(render("{user}", "first.last+tag@example.com", "b", "r", "n").as_deref(), Ok("first-last-tag"));
    }

    #[test]
    fn long_values_are_capped_at_a_dns_label() {
        let name =
            render("rde-{user}-{blueprint}", "alice@example.com", &"Blueprint ".repeat(20), "r", "n").expect("renders");
        assert_eq!(name.len(), 63);
        assert!(name.starts_with("rde-alice-blueprint-blueprint") && !name.ends_with('-'));
    }

    #[test]
    fn a_rendering_that_sanitises_to_nothing_is_an_error() {
        let owner = Email::parse("_@example.com").expect("valid");
        let template = template("{user}{name}");
        assert_eq!(
            template.render(&TemplateValues { owner: &owner, blueprint: "b", random: "r", name: "!!!" }),
            Err(EmptyName(template.clone()))
        );
    }

    #[test]
    fn unknown_placeholders_and_stray_braces_are_refused_at_parse() {
        for bad in
            ["rde-{owner}", "{User}", "{}", "{ name }", "rde-{user", "rde-user}", "{{name}}", "{na{me}", "}{", "---"]
        {
            let error = NameTemplate::parse("naming.environment", bad).expect_err(bad);
            assert_eq!(error.field, "naming.environment", "{bad}");
        }
        let error = NameTemplate::parse("naming.project", "rde-{owner}").expect_err("unknown");
        assert!(error.reason.contains("{owner}"), "{}", error.reason);
    }

    #[test]
    fn templates_are_one_bounded_line() {
        assert!(NameTemplate::parse("naming.project", &"t".repeat(MAX_TEMPLATE_CHARS)).is_ok());
        for bad in ["", "a\0b", "a\nb", "a\tb", &"t".repeat(MAX_TEMPLATE_CHARS + 1)] {
            assert_eq!(NameTemplate::parse("naming.project", bad).map_err(|e| e.field), Err("naming.project"));
        }
        assert!(NameTemplate::parse("naming.project", "static-name").is_ok(), "no placeholder is allowed");
    }

    #[test]
    fn the_defaults_are_valid_templates() {
        let defaults = crate::blueprint::NamingTemplates::default();
        for default in [&defaults.project, &defaults.environment] {
            assert_eq!(NameTemplate::parse("naming.project", default.as_str()).as_ref(), Ok(default));
        }
    }

    #[test]
    fn a_template_from_history_with_an_unknown_placeholder_still_renders() {
        let owner = Email::parse("ada@example.com").expect("valid");
        let old: NameTemplate = serde_json::from_str("\"rde-{owner}-{name}\"").expect("deserialises");
        let values = TemplateValues { owner: &owner, blueprint: "b", random: "r", name: "app" };
        assert_eq!(old.render(&values).as_deref(), Ok("rde-owner-app"));
        let broken: NameTemplate = serde_json::from_str("\"rde-{name\"").expect("deserialises");
        assert_eq!(broken.render(&values).as_deref(), Ok("rde-name"));
    }
}
