//! The relay's IP firewall: an ordered list of allow/deny CIDR rules and a default action; the first matching rule
//! wins. One aggregate for the organisation (id [`FIREWALL_ID`]); an admin replaces the whole list in one command,
//! so the order is always exactly what the admin saw. Blocked connection attempts are recorded on it too.

use std::net::IpAddr;

use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};

use crate::Email;

/// The firewall aggregate's id.
pub const FIREWALL_ID: &str = "org";
/// Most rules a list may hold.
pub const MAX_RULES: usize = 1000;
/// The most characters of a rule's description (one line; the API refuses more).
pub const MAX_DESCRIPTION_CHARS: usize = 200;

/// Allow or deny.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FirewallAction {
    /// Let the connection through.
    #[default]
    Allow,
    /// Refuse it.
    Deny,
}

/// An IPv4 or IPv6 network, `ADDRESS/PREFIX` (a bare address is a /32 or /128).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

/// Not a CIDR.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not an IPv4 or IPv6 network such as 10.0.0.0/8 or 2001:db8::/32")]
pub struct InvalidCidr(pub String);

impl Cidr {
    /// Parses `ADDRESS[/PREFIX]`; host bits must be zero.
    pub fn parse(raw: &str) -> Result<Self, InvalidCidr> {
        let invalid = || InvalidCidr(raw.to_string());
        let (address, prefix) = match raw.trim().split_once('/') {
            Some((address, prefix)) => (address, Some(prefix.parse::<u8>().map_err(|_| invalid())?)),
            None => (raw.trim(), None),
        };
        let network: IpAddr = address.parse().map_err(|_| invalid())?;
        let width = if network.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(width);
        if prefix > width {
            return Err(invalid());
        }
        let cidr = Self { network, prefix };
        if !cidr.contains(network) || Self::bits(network) & !cidr.mask() != 0 {
            return Err(invalid());
        }
        Ok(cidr)
    }

    fn bits(address: IpAddr) -> u128 {
        match address {
            IpAddr::V4(v4) => u128::from(u32::from(v4)),
            IpAddr::V6(v6) => u128::from(v6),
        }
    }

    fn mask(&self) -> u128 {
        let width = if self.network.is_ipv4() { 32 } else { 128 };
        if self.prefix == 0 {
            0
        } else {
            let ones = u128::MAX << (128 - u32::from(self.prefix));
            ones >> (128 - width)
        }
    }

    /// Whether `address` is in the network (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn contains(&self, address: IpAddr) -> bool {
        let address = address.to_canonical();
        if address.is_ipv4() != self.network.is_ipv4() {
            return false;
        }
        Self::bits(address) & self.mask() == Self::bits(self.network) & self.mask()
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl Serialize for Cidr {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(deserializer)?;
        Cidr::parse(&raw).map_err(serde::de::Error::custom)
    }
}

/// One rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FirewallRule {
    /// Allow or deny.
    pub action: FirewallAction,
    /// The network it matches.
    pub cidr: Cidr,
    /// Why it exists.
    #[serde(default)]
    pub description: String,
}

/// Commands on the firewall.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FirewallCommand {
    /// Replace the rule list and the default action.
    Replace {
        /// The ordered rules.
        rules: Vec<FirewallRule>,
        /// What happens when no rule matches.
        default_action: FirewallAction,
        /// The admin.
        by: Email,
    },
    /// Record a blocked connection attempt.
    RecordBlocked {
        /// The client's address.
        client_ip: String,
        /// The matching rule's position (None: the default action).
        rule: Option<usize>,
        /// The workspace asked for.
        workspace: String,
        /// Whose ticket it was, when known.
        user: Option<Email>,
    },
}

/// The firewall's events. **API Boundary:** stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FirewallEvent {
    /// The rules changed.
    FirewallRulesReplaced {
        /// The ordered rules.
        rules: Vec<FirewallRule>,
        /// The default action.
        default_action: FirewallAction,
        /// The admin.
        by: Email,
    },
    /// A connection was refused.
    ConnectionBlocked {
        /// The client's address.
        client_ip: String,
        /// The matching rule's position (None: the default action).
        rule: Option<usize>,
        /// The rule itself, as it was.
        matched: Option<FirewallRule>,
        /// The workspace asked for.
        workspace: String,
        /// Whose ticket it was.
        user: Option<Email>,
    },
}

impl DomainEvent for FirewallEvent {
    fn event_type(&self) -> String {
        match self {
            FirewallEvent::FirewallRulesReplaced { .. } => "FirewallRulesReplaced",
            FirewallEvent::ConnectionBlocked { .. } => "ConnectionBlocked",
        }
        .to_string()
    }

    fn event_version(&self) -> String {
        "1.0".to_string()
    }
}

/// Why a firewall command failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FirewallError {
    /// More than [`MAX_RULES`] rules.
    #[error("at most {MAX_RULES} rules")]
    TooManyRules,
}

/// The firewall.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Firewall {
    /// The ordered rules.
    pub rules: Vec<FirewallRule>,
    /// The default action.
    pub default_action: FirewallAction,
}

impl Firewall {
    /// The decision for `address`, with the position of the rule that made it (None: the default action).
    pub fn evaluate(&self, address: IpAddr) -> (FirewallAction, Option<usize>) {
        match self.rules.iter().position(|rule| rule.cidr.contains(address)) {
            Some(at) => (self.rules[at].action, Some(at)),
            None => (self.default_action, None),
        }
    }
}

impl Aggregate for Firewall {
    const TYPE: &'static str = "firewall";
    type Command = FirewallCommand;
    type Event = FirewallEvent;
    type Error = FirewallError;
    type Services = ();

    async fn handle(&mut self, command: Self::Command, _: &(), sink: &EventSink<Self>) -> Result<(), Self::Error> {
        match command {
            FirewallCommand::Replace { rules, default_action, by } => {
                if rules.len() > MAX_RULES {
                    return Err(FirewallError::TooManyRules);
                }
                sink.write(FirewallEvent::FirewallRulesReplaced { rules, default_action, by }, self).await;
            }
            FirewallCommand::RecordBlocked { client_ip, rule, workspace, user } => {
                let matched = rule.and_then(|at| self.rules.get(at).cloned());
                sink.write(FirewallEvent::ConnectionBlocked { client_ip, rule, matched, workspace, user }, self).await;
            }
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        if let FirewallEvent::FirewallRulesReplaced { rules, default_action, .. } = event {
            self.rules = rules;
            self.default_action = default_action;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn ip(raw: &str) -> IpAddr {
        raw.parse().unwrap()
    }

    #[test]
    fn cidrs_parse_and_match() {
        let ten = Cidr::parse("10.0.0.0/8").unwrap();
        assert!(ten.contains(ip("10.255.1.2")));
        assert!(!ten.contains(ip("11.0.0.1")));
        assert!(ten.contains(ip("::ffff:10.1.1.1")), "IPv4-mapped");
        assert!(Cidr::parse("0.0.0.0/0").unwrap().contains(ip("192.0.2.1")));
        assert!(!Cidr::parse("0.0.0.0/0").unwrap().contains(ip("2001:db8::1")));
        let v6 = Cidr::parse("2001:db8::/32").unwrap();
        assert!(v6.contains(ip("2001:db8:1::5")));
        assert!(!v6.contains(ip("2001:db9::1")));
        assert!(Cidr::parse("192.0.2.7").unwrap().contains(ip("192.0.2.7")));
        for bad in ["10.0.0.1/8", "10.0.0.0/33", "nope", "::/129", "10.0.0.0/x"] {
            assert!(Cidr::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(Cidr::parse("2001:db8::/32").unwrap().to_string(), "2001:db8::/32");
    }

    #[test]
    fn the_first_matching_rule_wins() {
        let rule =
            |action, cidr: &str| FirewallRule { action, cidr: Cidr::parse(cidr).unwrap(), description: "".into() };
        let firewall = Firewall {
            rules: vec![rule(FirewallAction::Allow, "10.1.0.0/16"), rule(FirewallAction::Deny, "10.0.0.0/8")],
            default_action: FirewallAction::Deny,
        };
        assert_eq!(firewall.evaluate(ip("10.1.2.3")), (FirewallAction::Allow, Some(0)));
        assert_eq!(firewall.evaluate(ip("10.2.2.3")), (FirewallAction::Deny, Some(1)));
        assert_eq!(firewall.evaluate(ip("192.0.2.1")), (FirewallAction::Deny, None));
        assert_eq!(Firewall::default().evaluate(ip("192.0.2.1")), (FirewallAction::Allow, None));
    }
}
