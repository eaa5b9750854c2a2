//! Portal settings: branding (name, accent colour, light and dark logos), the welcome screen, and the limits every
//! user lives under (running workspaces, launches and API requests per minute) (shared/spec/portal.md §2.15, §2.16).
//!
//! One aggregate per deployment (id [`PORTAL_ID`]), apart from the organisation's credentials (ADR 0021) because
//! every member reads it. Each part is replaced as a whole; the same value again records nothing. Logos are kept in
//! their events (at most [`MAX_LOGO_BYTES`] each, so the log stays small) and checked by their first bytes: a PNG
//! signature, or an SVG document, never what the uploader claimed alone.

use std::fmt;
use std::sync::Arc;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::values::{line, text, InvalidValue};
use crate::Email;

/// The id of the single `portal` aggregate.
pub const PORTAL_ID: &str = "portal";
/// The largest logo, in bytes.
pub const MAX_LOGO_BYTES: usize = 256 * 1024;
/// The longest portal name, welcome title and call-to-action text, in characters.
pub const MAX_NAME_CHARS: usize = 100;
/// The longest welcome description, in characters.
pub const MAX_WELCOME_DESCRIPTION_CHARS: usize = 2_000;
/// The defaults: 3 running workspaces, 5 launches and 200 API requests a minute per user (the seed's).
pub const DEFAULT_LIMITS: Limits =
    Limits { running_workspaces_per_user: 3, launches_per_minute: 5, api_requests_per_minute: 200 };
/// The largest value of each limit.
pub const MAX_RUNNING_WORKSPACES: u32 = 1_000;
/// The most launches a minute an admin may allow.
pub const MAX_LAUNCHES_PER_MINUTE: u32 = 10_000;
/// The most API requests a minute an admin may allow.
pub const MAX_API_REQUESTS_PER_MINUTE: u32 = 1_000_000;

/// A hex colour, `#rrggbb`, kept in lower case.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct AccentColour(String);

impl AccentColour {
    /// `#` and six hexadecimal digits (either case; kept in lower case).
    pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
        let digits = raw.strip_prefix('#').filter(|d| d.len() == 6 && d.bytes().all(|b| b.is_ascii_hexdigit()));
        match digits {
            Some(digits) => Ok(Self(format!("#{}", digits.to_ascii_lowercase()))),
            None => Err(InvalidValue::new("accent_color", "a hex colour: # and six hexadecimal digits")),
        }
    }

    /// `#rrggbb`.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// One line of text for the portal's name, the welcome title or the call to action.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Label(String);

impl Label {
    /// One line, trimmed, 1 to [`MAX_NAME_CHARS`] characters; `field` names it in a refusal.
    pub fn parse(field: &'static str, raw: &str) -> Result<Self, InvalidValue> {
        line(field, raw, MAX_NAME_CHARS).map(Self)
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The welcome screen's description: text, newlines allowed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct WelcomeText(String);

impl WelcomeText {
    /// Text, trimmed, 1 to [`MAX_WELCOME_DESCRIPTION_CHARS`] characters.
    pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
        text("welcome.description", raw, MAX_WELCOME_DESCRIPTION_CHARS).map(Self)
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Which logo.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogoVariant {
    /// For light themes, and for dark ones without a dark logo.
    Light,
    /// For dark themes.
    Dark,
}

impl LogoVariant {
    /// The stable name used in events and URLs.
    pub fn as_str(self) -> &'static str {
        match self {
            LogoVariant::Light => "light",
            LogoVariant::Dark => "dark",
        }
    }

    /// Parses a stable name.
    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "light" => Some(LogoVariant::Light),
            "dark" => Some(LogoVariant::Dark),
            _ => None,
        }
    }
}

/// What a logo is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogoFormat {
    /// `image/png`.
    Png,
    /// `image/svg+xml`.
    Svg,
}

impl LogoFormat {
    /// The media type.
    pub fn content_type(self) -> &'static str {
        match self {
            LogoFormat::Png => "image/png",
            LogoFormat::Svg => "image/svg+xml",
        }
    }

    /// The format a declared media type names (parameters such as `; charset=utf-8` ignored).
    pub fn from_content_type(raw: &str) -> Option<Self> {
        match raw.split(';').next().unwrap_or_default().trim().to_ascii_lowercase().as_str() {
            "image/png" => Some(LogoFormat::Png),
            "image/svg+xml" => Some(LogoFormat::Svg),
            _ => None,
        }
    }

    /// The format the bytes are, judged by their start: the PNG signature, or UTF-8 text whose first element
    /// (after an optional byte order mark, white space, an XML declaration, comments and a doctype) is `<svg`.
    pub fn sniff(bytes: &[u8]) -> Option<Self> {
        const PNG: &[u8] = b"\x89PNG\r\n\x1a\n";
        if bytes.starts_with(PNG) {
            return Some(LogoFormat::Png);
        }
        let text = std::str::from_utf8(bytes).ok()?;
        if text.contains('\0') {
            return None;
        }
        let mut rest = text.strip_prefix('\u{feff}').unwrap_or(text);
        loop {
            rest = rest.trim_start();
            if let Some(after) = rest.strip_prefix("<?xml") {
                rest = &after[after.find("?>")? + 2..];
            } else if let Some(after) = rest.strip_prefix("<!--") {
                rest = &after[after.find("-->")? + 3..];
            } else if let Some(after) = rest.strip_prefix("<!DOCTYPE") {
                rest = &after[after.find('>')? + 1..];
            } else {
                break;
            }
        }
        let root = rest.strip_prefix("<svg")?;
        root.starts_with(|c: char| c.is_whitespace() || c == '>' || c == '/').then_some(LogoFormat::Svg)
    }
}

/// A logo's bytes, shared rather than copied when the aggregate is cloned; base64 in events.
#[derive(Clone, PartialEq, Eq)]
pub struct LogoBytes(Arc<Vec<u8>>);

impl LogoBytes {
    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for LogoBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LogoBytes(<{} bytes>)", self.0.len())
    }
}

impl Serialize for LogoBytes {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&STANDARD.encode(self.0.as_slice()))
    }
}

impl<'de> Deserialize<'de> for LogoBytes {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        STANDARD.decode(text).map(|bytes| LogoBytes(Arc::new(bytes))).map_err(serde::de::Error::custom)
    }
}

/// An uploaded logo: its format (sniffed, and matching what was declared), its bytes and their SHA-256 (computed
/// by the caller: the domain does no hashing), which names the version in URLs and `ETag`s.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Logo {
    /// PNG or SVG.
    pub format: LogoFormat,
    /// SHA-256 of the bytes, 64 lower-case hex digits.
    pub sha256: String,
    /// The bytes.
    pub bytes: LogoBytes,
}

/// Why an upload is not a logo.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LogoError {
    /// Larger than [`MAX_LOGO_BYTES`].
    #[error("a logo is at most {max} bytes; this one is {len}")]
    TooLarge {
        /// Its size.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Neither PNG nor SVG, or not what it was declared as.
    #[error("a logo is a PNG or an SVG image, sent with its own Content-Type (image/png or image/svg+xml)")]
    UnsupportedType,
}

impl Logo {
    /// Checks an upload: the size, and that its bytes are what `declared` says. `sha256` is the caller's digest of
    /// `bytes` (64 hex digits).
    pub fn new(declared: &str, bytes: Vec<u8>, sha256: String) -> Result<Self, LogoError> {
        if bytes.len() > MAX_LOGO_BYTES {
            return Err(LogoError::TooLarge { len: bytes.len(), max: MAX_LOGO_BYTES });
        }
        let format = LogoFormat::from_content_type(declared).ok_or(LogoError::UnsupportedType)?;
        if LogoFormat::sniff(&bytes) != Some(format) {
            return Err(LogoError::UnsupportedType);
        }
        Ok(Self { format, sha256: sha256.to_ascii_lowercase(), bytes: LogoBytes(Arc::new(bytes)) })
    }
}

/// Name and accent colour; `None` is the default.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Branding {
    /// The portal's name (default: "Developer Portal").
    #[serde(default)]
    pub name: Option<Label>,
    /// The accent colour (default: the frontend's).
    #[serde(default)]
    pub accent_color: Option<AccentColour>,
}

/// The welcome screen; `None` parts are the frontend's defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    /// The title.
    #[serde(default)]
    pub title: Option<Label>,
    /// The description.
    #[serde(default)]
    pub description: Option<WelcomeText>,
    /// The call-to-action button's text.
    #[serde(default)]
    pub cta: Option<Label>,
}

/// Per-user limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Workspaces one user may have running at once.
    pub running_workspaces_per_user: u32,
    /// Workspace launches per minute per user.
    pub launches_per_minute: u32,
    /// API requests per minute per user.
    pub api_requests_per_minute: u32,
}

impl Default for Limits {
    fn default() -> Self {
        DEFAULT_LIMITS
    }
}

impl Limits {
    /// Each limit from 1 to its maximum.
    pub fn new(running: u32, launches: u32, api: u32) -> Result<Self, InvalidValue> {
        let check = |field: &'static str, value: u32, max: u32| {
            if (1..=max).contains(&value) {
                Ok(value)
            } else {
                Err(InvalidValue::new(field, format!("from 1 to {max}")))
            }
        };
        Ok(Self {
            running_workspaces_per_user: check("running_workspaces_per_user", running, MAX_RUNNING_WORKSPACES)?,
            launches_per_minute: check("launches_per_minute", launches, MAX_LAUNCHES_PER_MINUTE)?,
            api_requests_per_minute: check("api_requests_per_minute", api, MAX_API_REQUESTS_PER_MINUTE)?,
        })
    }
}

/// The portal's settings. The default value is every default.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Portal {
    branding: Branding,
    logo_light: Option<Logo>,
    logo_dark: Option<Logo>,
    welcome: Welcome,
    limits: Limits,
    version: u64,
}

impl Portal {
    /// Name and accent colour.
    pub fn branding(&self) -> &Branding {
        &self.branding
    }

    /// The logo uploaded for `variant`, if any (no fallback: see [`Portal::logo_for`]).
    pub fn logo(&self, variant: LogoVariant) -> Option<&Logo> {
        match variant {
            LogoVariant::Light => self.logo_light.as_ref(),
            LogoVariant::Dark => self.logo_dark.as_ref(),
        }
    }

    /// The logo to show for `variant`: a dark theme without a dark logo gets the light one.
    pub fn logo_for(&self, variant: LogoVariant) -> Option<&Logo> {
        self.logo(variant).or_else(|| self.logo(LogoVariant::Light))
    }

    /// The welcome screen.
    pub fn welcome(&self) -> &Welcome {
        &self.welcome
    }

    /// The limits.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// The aggregate's version.
    pub fn version(&self) -> u64 {
        self.version
    }

    fn check_version(&self, if_version: Option<u64>) -> Result<(), PortalError> {
        match if_version {
            Some(expected) if expected != self.version => Err(PortalError::Stale { expected, actual: self.version }),
            _ => Ok(()),
        }
    }
}

/// A request to change the portal's settings; each names the admin and may carry the version they saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortalCommand {
    /// Replace name and accent colour.
    SetBranding {
        /// The new branding.
        branding: Branding,
        /// The admin.
        by: Email,
        /// Only at this version.
        if_version: Option<u64>,
    },
    /// Upload a logo.
    SetLogo {
        /// Which.
        variant: LogoVariant,
        /// The logo.
        logo: Logo,
        /// The admin.
        by: Email,
        /// Only at this version.
        if_version: Option<u64>,
    },
    /// Remove a logo (back to the default).
    ClearLogo {
        /// Which.
        variant: LogoVariant,
        /// The admin.
        by: Email,
        /// Only at this version.
        if_version: Option<u64>,
    },
    /// Name, accent colour and both logos back to the defaults.
    ResetBranding {
        /// The admin.
        by: Email,
        /// Only at this version.
        if_version: Option<u64>,
    },
    /// Replace the welcome screen.
    SetWelcome {
        /// The new welcome screen.
        welcome: Welcome,
        /// The admin.
        by: Email,
        /// Only at this version.
        if_version: Option<u64>,
    },
    /// Replace the limits.
    SetLimits {
        /// The new limits.
        limits: Limits,
        /// The admin.
        by: Email,
        /// Only at this version.
        if_version: Option<u64>,
    },
}

/// What happened to the portal's settings. **API Boundary:** stored.
// A logo event carries the logo; boxing it would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PortalEvent {
    /// Name and accent colour replaced.
    PortalBrandingSet {
        /// Now.
        branding: Branding,
        /// The admin.
        by: Email,
    },
    /// A logo uploaded.
    PortalLogoSet {
        /// Which.
        variant: LogoVariant,
        /// The logo.
        logo: Logo,
        /// The admin.
        by: Email,
    },
    /// A logo removed.
    PortalLogoCleared {
        /// Which.
        variant: LogoVariant,
        /// The admin.
        by: Email,
    },
    /// Name, accent colour and logos back to the defaults.
    PortalBrandingReset {
        /// The admin.
        by: Email,
    },
    /// The welcome screen replaced.
    PortalWelcomeSet {
        /// Now.
        welcome: Welcome,
        /// The admin.
        by: Email,
    },
    /// The limits replaced.
    PortalLimitsSet {
        /// Now.
        limits: Limits,
        /// The admin.
        by: Email,
    },
}

impl DomainEvent for PortalEvent {
    fn event_type(&self) -> String {
        match self {
            PortalEvent::PortalBrandingSet { .. } => "PortalBrandingSet",
            PortalEvent::PortalLogoSet { .. } => "PortalLogoSet",
            PortalEvent::PortalLogoCleared { .. } => "PortalLogoCleared",
            PortalEvent::PortalBrandingReset { .. } => "PortalBrandingReset",
            PortalEvent::PortalWelcomeSet { .. } => "PortalWelcomeSet",
            PortalEvent::PortalLimitsSet { .. } => "PortalLimitsSet",
        }
        .to_string()
    }

    fn event_version(&self) -> String {
        "1.0".to_string()
    }
}

/// Why the portal refuses a command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PortalError {
    /// The settings changed since the version the caller named.
    #[error("the portal settings are at version {actual}, not {expected}")]
    Stale {
        /// The version the caller named.
        expected: u64,
        /// The version.
        actual: u64,
    },
}

impl Aggregate for Portal {
    const TYPE: &'static str = "portal";
    type Command = PortalCommand;
    type Event = PortalEvent;
    type Error = PortalError;
    type Services = ();

    async fn handle(&mut self, command: Self::Command, _: &(), sink: &EventSink<Self>) -> Result<(), Self::Error> {
        let event = match command {
            PortalCommand::SetBranding { branding, by, if_version } => {
                self.check_version(if_version)?;
                if self.branding == branding {
                    return Ok(());
                }
                PortalEvent::PortalBrandingSet { branding, by }
            }
            PortalCommand::SetLogo { variant, logo, by, if_version } => {
                self.check_version(if_version)?;
                if self.logo(variant).is_some_and(|stored| stored.sha256 == logo.sha256 && stored.format == logo.format)
                {
                    return Ok(());
                }
                PortalEvent::PortalLogoSet { variant, logo, by }
            }
            PortalCommand::ClearLogo { variant, by, if_version } => {
                self.check_version(if_version)?;
                // A logo is a fixed slot: clearing an empty one is done already (records nothing).
                if self.logo(variant).is_none() {
                    return Ok(());
                }
                PortalEvent::PortalLogoCleared { variant, by }
            }
            PortalCommand::ResetBranding { by, if_version } => {
                self.check_version(if_version)?;
                if self.branding == Branding::default() && self.logo_light.is_none() && self.logo_dark.is_none() {
                    return Ok(());
                }
                PortalEvent::PortalBrandingReset { by }
            }
            PortalCommand::SetWelcome { welcome, by, if_version } => {
                self.check_version(if_version)?;
                if self.welcome == welcome {
                    return Ok(());
                }
                PortalEvent::PortalWelcomeSet { welcome, by }
            }
            PortalCommand::SetLimits { limits, by, if_version } => {
                self.check_version(if_version)?;
                if self.limits == limits {
                    return Ok(());
                }
                PortalEvent::PortalLimitsSet { limits, by }
            }
        };
        sink.write(event, self).await;
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        self.version += 1;
        match event {
            PortalEvent::PortalBrandingSet { branding, .. } => self.branding = branding,
            PortalEvent::PortalLogoSet { variant: LogoVariant::Light, logo, .. } => self.logo_light = Some(logo),
            PortalEvent::PortalLogoSet { variant: LogoVariant::Dark, logo, .. } => self.logo_dark = Some(logo),
            PortalEvent::PortalLogoCleared { variant: LogoVariant::Light, .. } => self.logo_light = None,
            PortalEvent::PortalLogoCleared { variant: LogoVariant::Dark, .. } => self.logo_dark = None,
            PortalEvent::PortalBrandingReset { .. } => {
                self.branding = Branding::default();
                self.logo_light = None;
                self.logo_dark = None;
            }
            PortalEvent::PortalWelcomeSet { welcome, .. } => self.welcome = welcome,
            PortalEvent::PortalLimitsSet { limits, .. } => self.limits = limits,
        }
    }
}

#[cfg(test)]
mod tests {
    use cqrs_es::test::TestFramework;

    use super::*;

    type PortalTest = TestFramework<Portal>;

    const PNG: &[u8] = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR";
    const SVG: &str = "<?xml version=\"1.0\"?>\n<!-- logo -->\n<svg xmlns=\"http://www.w3.org/2000/svg\"/>";

    fn admin() -> Email {
        Email::parse("root@example.com").expect("valid")
    }

    fn logo(declared: &str, bytes: &[u8], sha: &str) -> Logo {
        Logo::new(declared, bytes.to_vec(), sha.into()).expect("a logo")
    }

    fn branding(name: &str) -> Branding {
        Branding { name: Some(Label::parse("name", name).expect("valid")), accent_color: None }
    }

    #[test]
    fn logos_are_judged_by_their_bytes() {
        assert_eq!(LogoFormat::sniff(PNG), Some(LogoFormat::Png));
        assert_eq!(LogoFormat::sniff(SVG.as_bytes()), Some(LogoFormat::Svg));
        assert_eq!(LogoFormat::sniff("\u{feff} <svg>".as_bytes()), Some(LogoFormat::Svg));
        assert_eq!(LogoFormat::sniff(b"<!DOCTYPE svg PUBLIC \"x\" \"y\"><svg/>"), Some(LogoFormat::Svg));
        for bad in [&b"<svgx/>"[..], b"<html><svg/></html>", b"GIF89a", b"\xff\xd8\xff\xe0", b"<svg\0>", b"", b"<?xml"]
        {
            assert_eq!(LogoFormat::sniff(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
        assert_eq!(Logo::new("image/svg+xml", PNG.to_vec(), "a".into()), Err(LogoError::UnsupportedType));
        assert_eq!(Logo::new("image/gif", PNG.to_vec(), "a".into()), Err(LogoError::UnsupportedType));
        assert!(Logo::new("IMAGE/PNG; x=y", PNG.to_vec(), "a".into()).is_ok());
        let mut huge = PNG.to_vec();
        huge.resize(MAX_LOGO_BYTES + 1, 0);
        assert_eq!(
            Logo::new("image/png", huge, "a".into()),
            Err(LogoError::TooLarge { len: MAX_LOGO_BYTES + 1, max: MAX_LOGO_BYTES })
        );
    }

    #[test]
    fn values_parse_strictly() {
        assert_eq!(AccentColour::parse("#A1b2C3").expect("valid").as_str(), "#a1b2c3");
        for bad in ["a1b2c3", "#a1b2c", "#a1b2c3d", "#g1b2c3", ""] {
            assert_eq!(AccentColour::parse(bad).unwrap_err().field, "accent_color", "{bad:?}");
        }
        assert_eq!(Limits::new(0, 5, 200).unwrap_err().field, "running_workspaces_per_user");
        assert_eq!(Limits::new(3, 10_001, 200).unwrap_err().field, "launches_per_minute");
        assert_eq!(Limits::new(3, 5, 0).unwrap_err().field, "api_requests_per_minute");
        assert_eq!(Limits::default(), Limits::new(3, 5, 200).expect("valid"));
    }

    #[test]
    fn parts_are_replaced_as_a_whole_and_the_same_again_records_nothing() {
        PortalTest::with(())
            .given_no_previous_events()
            .when(PortalCommand::SetBranding { branding: branding("Forge"), by: admin(), if_version: None })
            .then_expect_events(vec![PortalEvent::PortalBrandingSet { branding: branding("Forge"), by: admin() }]);
        PortalTest::with(())
            .given(vec![PortalEvent::PortalBrandingSet { branding: branding("Forge"), by: admin() }])
            .when(PortalCommand::SetBranding { branding: branding("Forge"), by: admin(), if_version: Some(1) })
            .then_expect_events(vec![]);
        PortalTest::with(())
            .given(vec![PortalEvent::PortalBrandingSet { branding: branding("Forge"), by: admin() }])
            .when(PortalCommand::SetLimits { limits: DEFAULT_LIMITS, by: admin(), if_version: Some(0) })
            .then_expect_error(PortalError::Stale { expected: 0, actual: 1 });
        PortalTest::with(())
            .given_no_previous_events()
            .when(PortalCommand::SetLimits { limits: DEFAULT_LIMITS, by: admin(), if_version: None })
            .then_expect_events(vec![]);
    }

    #[test]
    fn logos_fall_back_clear_and_reset() {
        let light = logo("image/png", PNG, "11");
        PortalTest::with(())
            .given_no_previous_events()
            .when(PortalCommand::ClearLogo { variant: LogoVariant::Dark, by: admin(), if_version: None })
            .then_expect_events(vec![]);
        let set = PortalEvent::PortalLogoSet { variant: LogoVariant::Light, logo: light.clone(), by: admin() };
        PortalTest::with(())
            .given(vec![set.clone()])
            .when(PortalCommand::SetLogo {
                variant: LogoVariant::Light,
                logo: light.clone(),
                by: admin(),
                if_version: None,
            })
            .then_expect_events(vec![]);
        PortalTest::with(())
            .given(vec![set.clone()])
            .when(PortalCommand::ResetBranding { by: admin(), if_version: None })
            .then_expect_events(vec![PortalEvent::PortalBrandingReset { by: admin() }]);
        PortalTest::with(())
            .given_no_previous_events()
            .when(PortalCommand::ResetBranding { by: admin(), if_version: None })
            .then_expect_events(vec![]);

        let mut portal = Portal::default();
        portal.apply(set);
        assert_eq!(portal.logo_for(LogoVariant::Dark).map(|l| l.sha256.as_str()), Some("11"), "dark falls back");
        assert_eq!(portal.logo(LogoVariant::Dark), None);
        portal.apply(PortalEvent::PortalLogoSet {
            variant: LogoVariant::Dark,
            logo: logo("image/svg+xml", SVG.as_bytes(), "22"),
            by: admin(),
        });
        assert_eq!(portal.logo_for(LogoVariant::Dark).map(|l| l.format), Some(LogoFormat::Svg));
        portal.apply(PortalEvent::PortalBrandingReset { by: admin() });
        assert_eq!(portal.logo_for(LogoVariant::Dark), None);
        assert_eq!(portal.version(), 3);
    }

    #[test]
    fn stored_events_keep_their_shape() {
        let event =
            PortalEvent::PortalLogoSet { variant: LogoVariant::Light, logo: logo("image/png", PNG, "ab"), by: admin() };
        let json = serde_json::to_value(&event).expect("serialises");
        assert_eq!(json["PortalLogoSet"]["logo"]["bytes"], STANDARD.encode(PNG));
        assert_eq!(json["PortalLogoSet"]["logo"]["format"], "png");
        assert_eq!(serde_json::from_value::<PortalEvent>(json).expect("reads"), event);
        let limits = serde_json::json!({"PortalLimitsSet": {"limits": {"running_workspaces_per_user": 2,
            "launches_per_minute": 5, "api_requests_per_minute": 200}, "by": "root@example.com"}});
        assert!(serde_json::from_value::<PortalEvent>(limits).is_ok());
        assert_eq!(event.event_type(), "PortalLogoSet");
    }
}
