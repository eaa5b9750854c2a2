#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use chrono::{DateTime, TimeZone, Utc};
use cqrs_es::test::TestFramework;
use cqrs_es::{Aggregate, DomainEvent};

use super::*;
use crate::Email;

fn issued(at: DateTime<Utc>) -> TicketEvent {
    TicketEvent::TicketIssued {
        ticket_hash: "ab".into(),
        user: Email::parse("ada@example.com").unwrap(),
        workspace: "ws-1".into(),
        kind: "terminal".into(),
        port: None,
        expires_at: at,
    }
}

fn redeem(workspace: &str, now: DateTime<Utc>) -> TicketCommand {
    TicketCommand::Redeem {
        workspace: workspace.into(),
        kind: "terminal".into(),
        port: None,
        now,
        client_ip: Some("2001:db8::7".into()),
    }
}

#[test]
fn a_preview_ticket_opens_only_its_port() {
    let expiry = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 30).unwrap();
    let now = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 10).unwrap();
    let preview = TicketEvent::TicketIssued {
        ticket_hash: "cd".into(),
        user: Email::parse("ada@example.com").unwrap(),
        workspace: "ws-1".into(),
        kind: "preview".into(),
        port: Some(3000),
        expires_at: expiry,
    };
    let redeem_port = |kind: &str, port| TicketCommand::Redeem {
        workspace: "ws-1".into(),
        kind: kind.into(),
        port,
        now,
        client_ip: None,
    };
    let foreign =
        vec![TicketEvent::TicketRefused { reason: RefusalReason::Foreign, workspace: "ws-1".into(), client_ip: None }];
    for (kind, port) in [("preview", Some(3001)), ("preview", None), ("terminal", None), ("terminal", Some(3000))] {
        TestFramework::<Ticket>::with(())
            .given(vec![preview.clone()])
            .when(redeem_port(kind, port))
            .then_expect_events(foreign.clone());
    }
    TestFramework::<Ticket>::with(())
        .given(vec![preview])
        .when(redeem_port("preview", Some(3000)))
        .then_expect_events(vec![TicketEvent::TicketRedeemed { workspace: "ws-1".into() }]);
    // A terminal ticket stored before previews existed has no port, and still reads as a terminal ticket.
    let old: TicketEvent = serde_json::from_value(serde_json::json!({"TicketIssued": {
        "ticket_hash": "ab", "user": "ada@example.com", "workspace": "ws-1", "kind": "terminal",
        "expires_at": "2026-01-01T00:00:30Z"}}))
    .unwrap();
    assert_eq!(old, issued(expiry));
    assert!(!serde_json::to_string(&issued(expiry)).unwrap().contains("port"), "terminal tickets store no port");
}

#[test]
fn a_ticket_is_redeemed_once() {
    let expiry = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 30).unwrap();
    let now = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 10).unwrap();
    TestFramework::<Ticket>::with(())
        .given(vec![issued(expiry)])
        .when(redeem("ws-1", now))
        .then_expect_events(vec![TicketEvent::TicketRedeemed { workspace: "ws-1".into() }]);
    TestFramework::<Ticket>::with(())
        .given(vec![issued(expiry), TicketEvent::TicketRedeemed { workspace: "ws-1".into() }])
        .when(redeem("ws-1", now))
        .then_expect_events(vec![TicketEvent::TicketRefused {
            reason: RefusalReason::Reused,
            workspace: "ws-1".into(),
            client_ip: Some("2001:db8::7".into()),
        }]);
}

#[test]
fn expired_foreign_and_unknown_tickets_are_refused() {
    let expiry = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 30).unwrap();
    let late = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 30).unwrap();
    let now = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 10).unwrap();
    let refused = |reason, workspace: &str| {
        vec![TicketEvent::TicketRefused {
            reason,
            workspace: workspace.to_string(),
            client_ip: Some("2001:db8::7".into()),
        }]
    };
    TestFramework::<Ticket>::with(())
        .given(vec![issued(expiry)])
        .when(redeem("ws-1", late))
        .then_expect_events(refused(RefusalReason::Expired, "ws-1"));
    TestFramework::<Ticket>::with(())
        .given(vec![issued(expiry)])
        .when(redeem("ws-2", now))
        .then_expect_events(refused(RefusalReason::Foreign, "ws-2"));
    TestFramework::<Ticket>::with(())
        .given_no_previous_events()
        .when(redeem("ws-1", now))
        .then_expect_events(refused(RefusalReason::Unknown, "ws-1"));
}

#[test]
fn refusals_stored_before_client_ips_were_recorded_still_read() {
    let old: TicketEvent =
        serde_json::from_str(r#"{"TicketRefused": {"reason": "unknown", "workspace": "ws-1"}}"#).unwrap();
    assert_eq!(
        old,
        TicketEvent::TicketRefused { reason: RefusalReason::Unknown, workspace: "ws-1".into(), client_ip: None }
    );
    let new = TicketEvent::TicketRefused {
        reason: RefusalReason::Expired,
        workspace: "ws-1".into(),
        client_ip: Some("2001:db8::7".into()),
    };
    let stored = serde_json::to_value(&new).unwrap();
    assert_eq!(stored["TicketRefused"]["client_ip"], "2001:db8::7");
    assert_eq!(serde_json::from_value::<TicketEvent>(stored).unwrap(), new);
    assert_eq!(new.event_version(), "1.0", "an optional field with a default needs no new version");
}

#[test]
fn close_reasons_are_stored_by_their_stable_names() {
    let all = [
        CloseReason::ClientClosed,
        CloseReason::AgentLost,
        CloseReason::IdleTimeout,
        CloseReason::MaxAge,
        CloseReason::Shutdown,
        CloseReason::Firewall,
        CloseReason::AgentRevoked,
        CloseReason::DetachTimeout,
    ];
    for reason in all {
        assert_eq!(serde_json::to_value(reason).unwrap(), reason.as_str());
    }
    assert_eq!(serde_json::from_str::<CloseReason>("\"agent_revoked\"").unwrap(), CloseReason::AgentRevoked);
}

fn minted(workspace: Option<&str>, tags: &[(&str, &str)]) -> AgentTokenEvent {
    AgentTokenEvent::AgentTokenMinted {
        name: "a".into(),
        by: Email::parse("root@example.com").unwrap(),
        workspace: workspace.map(str::to_string),
        tags: tags.iter().map(|(key, value)| (key.to_string(), value.to_string())).collect(),
    }
}

fn token(events: Vec<AgentTokenEvent>) -> AgentToken {
    let mut token = AgentToken::default();
    for event in events {
        token.apply(event);
    }
    token
}

#[test]
fn a_token_is_minted_bound_to_its_workspace_and_tags() {
    let by = Email::parse("root@example.com").unwrap();
    let tags: BTreeMap<String, String> = [("RDE_OWNER_EMAIL".to_string(), "ada@example.com".to_string())].into();
    TestFramework::<AgentToken>::with(())
        .given_no_previous_events()
        .when(AgentTokenCommand::Mint { name: "a".into(), workspace: "ws-1".into(), tags: tags.clone(), by })
        .then_expect_events(vec![minted(Some("ws-1"), &[("RDE_OWNER_EMAIL", "ada@example.com")])]);
    TestFramework::<AgentToken>::with(())
        .given(vec![minted(Some("ws-1"), &[])])
        .when(AgentTokenCommand::Mint {
            name: "b".into(),
            workspace: "ws-2".into(),
            tags,
            by: Email::parse("root@example.com").unwrap(),
        })
        .then_expect_error(AgentTokenError::Exists);
}

#[test]
fn a_token_admits_only_its_own_workspace() {
    let bound = token(vec![minted(Some("ws-1"), &[])]);
    assert_eq!(bound.admits("ws-1"), Ok(()));
    assert_eq!(bound.admits("ws-2"), Err(AgentRefusal::OtherWorkspace));
    assert_eq!(bound.admits("WS-1"), Err(AgentRefusal::OtherWorkspace));
    // Minted before tokens were bound: serves no workspace at all.
    assert_eq!(token(vec![minted(None, &[])]).admits("ws-1"), Err(AgentRefusal::Unbound));
    assert_eq!(AgentToken::default().admits("ws-1"), Err(AgentRefusal::Invalid));
    let by = Email::parse("root@example.com").unwrap();
    let revoked = token(vec![minted(Some("ws-1"), &[]), AgentTokenEvent::AgentTokenRevoked { by }]);
    assert_eq!(revoked.admits("ws-1"), Err(AgentRefusal::Invalid));
}

#[test]
fn an_agent_cannot_announce_the_facts_its_token_holds() {
    let bound = token(vec![minted(Some("ws-1"), &[("RDE_OWNER_EMAIL", "ada@example.com")])]);
    let announced: BTreeMap<String, String> = [
        ("RDE_OWNER_EMAIL", "eve@example.com"),
        ("BLUEPRINT_KEY", "web"),
        ("BLUEPRINT_PROJECT_ID", "p"),
        ("RDE_DISPLAY_NAME", "Eve's"),
        ("EDITOR", "vim"),
    ]
    .iter()
    .map(|(key, value)| (key.to_string(), value.to_string()))
    .collect();
    let tags = bound.tags_for(announced);
    let expected: BTreeMap<String, String> = [("EDITOR", "vim"), ("RDE_OWNER_EMAIL", "ada@example.com")]
        .iter()
        .map(|(key, value)| (key.to_string(), value.to_string()))
        .collect();
    assert_eq!(tags, expected);
}

#[test]
fn tokens_minted_before_binding_still_read() {
    let stored = r#"{"AgentTokenMinted":{"name":"old","by":"root@example.com"}}"#;
    let event: AgentTokenEvent = serde_json::from_str(stored).unwrap();
    let by = Email::parse("root@example.com").unwrap();
    assert_eq!(
        event,
        AgentTokenEvent::AgentTokenMinted { name: "old".into(), by, workspace: None, tags: BTreeMap::new() }
    );
    // A bound token's payload carries its workspace and tags; an unbound one's is as before.
    let json = serde_json::to_value(minted(Some("ws-1"), &[("BLUEPRINT_KEY", "web")])).unwrap();
    assert_eq!(json["AgentTokenMinted"]["workspace"], "ws-1");
    assert_eq!(json["AgentTokenMinted"]["tags"]["BLUEPRINT_KEY"], "web");
    let json = serde_json::to_value(minted(None, &[])).unwrap();
    assert_eq!(json.to_string(), r#"{"AgentTokenMinted":{"by":"root@example.com","name":"a"}}"#);
}

#[test]
fn agent_tokens_mint_and_revoke_once() {
    let by = Email::parse("root@example.com").unwrap();
    TestFramework::<AgentToken>::with(())
        .given(vec![minted(Some("ws-1"), &[])])
        .when(AgentTokenCommand::Revoke { by: by.clone() })
        .then_expect_events(vec![AgentTokenEvent::AgentTokenRevoked { by: by.clone() }]);
    TestFramework::<AgentToken>::with(())
        .given_no_previous_events()
        .when(AgentTokenCommand::Revoke { by })
        .then_expect_error(AgentTokenError::NotFound);
}

fn opened() -> SessionEvent {
    SessionEvent::SessionOpened {
        session_id: "s-1".into(),
        user: Email::parse("ada@example.com").unwrap(),
        workspace: "ws-1".into(),
        agent: "agent-1-ws-1".into(),
        client_ip: "192.0.2.1".into(),
        user_agent: "test".into(),
        kind: SessionKind::Terminal,
        port: None,
    }
}

#[test]
fn sessions_recorded_before_previews_read_as_terminals() {
    let old: SessionEvent = serde_json::from_value(serde_json::json!({"SessionOpened": {
        "session_id": "s-1", "user": "ada@example.com", "workspace": "ws-1", "agent": "agent-1-ws-1",
        "client_ip": "192.0.2.1", "user_agent": "test"}}))
    .unwrap();
    assert_eq!(old, opened());
    let preview = SessionCommand::Open {
        session_id: "s-2".into(),
        user: Email::parse("ada@example.com").unwrap(),
        workspace: "ws-1".into(),
        agent: "agent-1-ws-1".into(),
        client_ip: "192.0.2.1".into(),
        user_agent: "test".into(),
        kind: SessionKind::Preview,
        port: Some(5173),
    };
    TestFramework::<TerminalSession>::with(()).given_no_previous_events().when(preview).then_expect_events(vec![
        SessionEvent::SessionOpened {
            session_id: "s-2".into(),
            user: Email::parse("ada@example.com").unwrap(),
            workspace: "ws-1".into(),
            agent: "agent-1-ws-1".into(),
            client_ip: "192.0.2.1".into(),
            user_agent: "test".into(),
            kind: SessionKind::Preview,
            port: Some(5173),
        },
    ]);
    assert_eq!((SessionKind::Preview.as_str(), CloseReason::AccessRevoked.as_str()), ("preview", "access_revoked"));
}

fn resumed(requested_offset: u64, offset: u64) -> SessionEvent {
    SessionEvent::SessionResumed { client_ip: "192.0.2.2".into(), user_agent: "t".into(), requested_offset, offset }
}

#[test]
fn a_session_outlives_its_browsers_until_it_closes_for_good() {
    let detach = |offset| SessionCommand::Detach { client_ip: "192.0.2.1".into(), offset };
    // The opening browser leaves: the session stays open with nobody attached.
    TestFramework::<TerminalSession>::with(()).given(vec![opened()]).when(detach(10)).then_expect_events(vec![
        SessionEvent::SessionDetached { client_ip: "192.0.2.1".into(), offset: 10, attached: 0 },
    ]);
    // It comes back (or a second browser joins): counted.
    let resume = SessionCommand::Resume {
        client_ip: "192.0.2.2".into(),
        user_agent: "t".into(),
        requested_offset: 5,
        offset: 7,
    };
    TestFramework::<TerminalSession>::with(())
        .given(vec![opened(), SessionEvent::SessionDetached { client_ip: "x".into(), offset: 1, attached: 0 }])
        .when(resume.clone())
        .then_expect_events(vec![resumed(5, 7)]);
    TestFramework::<TerminalSession>::with(()).given(vec![opened(), resumed(0, 0)]).when(detach(3)).then_expect_events(
        vec![SessionEvent::SessionDetached { client_ip: "192.0.2.1".into(), offset: 3, attached: 1 }],
    );
    // Nobody left to detach; nothing to attach to before it opens or after it closes.
    TestFramework::<TerminalSession>::with(())
        .given(vec![opened(), SessionEvent::SessionDetached { client_ip: "x".into(), offset: 1, attached: 0 }])
        .when(detach(1))
        .then_expect_error(SessionError::NotAttached);
    TestFramework::<TerminalSession>::with(())
        .given_no_previous_events()
        .when(resume.clone())
        .then_expect_error(SessionError::NotOpen);
    let closed =
        SessionEvent::SessionClosed { bytes_in: 1, bytes_out: 2, duration_ms: 3, reason: CloseReason::DetachTimeout };
    TestFramework::<TerminalSession>::with(())
        .given(vec![opened(), closed.clone()])
        .when(resume)
        .then_expect_error(SessionError::AlreadyClosed);
    TestFramework::<TerminalSession>::with(())
        .given(vec![opened(), closed])
        .when(detach(1))
        .then_expect_error(SessionError::AlreadyClosed);
    let mut state = TerminalSession::default();
    for event in [opened(), resumed(0, 0), resumed(4, 4)] {
        state.apply(event);
    }
    assert_eq!(state.attached, 3);
    assert_eq!(resumed(1, 2).event_type(), "SessionResumed");
    // A state stored before sessions could detach reads as none attached (no session outlives a restart).
    let old: TerminalSession = serde_json::from_str(r#"{"opened":true,"closed":false}"#).unwrap();
    assert_eq!(old.attached, 0);
}
