//! The relay's HTTP surface: its REST routes ([`routes`]: agent tokens, workspaces, tickets, sessions, relay activity,
//! the IP firewall) and its two WebSocket endpoints ([`ws`]: the agent connection and the browser terminal, on
//! actix-ws). The gateway's state and rules are `relay::gateway::Gateway`, reached through `AppState::gateway`.

mod routes;
mod ws;

use actix_web::web;

use routes::{
    ActivityView, FirewallActionDoc, FirewallBody, FirewallRuleDoc, FirewallView, MintBody, MintedToken, SessionView,
    TicketBody, TicketView, WorkspacePage, WorkspaceView,
};

/// The relay's part of the OpenAPI document; [`crate::ops::document`] merges it in.
#[derive(utoipa::OpenApi)]
#[openapi(
    paths(
        routes::mint_agent_token, routes::revoke_agent_token, routes::list_agents, routes::issue_ticket,
        routes::list_sessions, routes::list_activity, routes::get_firewall, routes::put_firewall,
        ws::agent_connect, ws::terminal,
    ),
    components(schemas(
        MintBody, MintedToken, WorkspaceView, WorkspacePage, TicketBody, TicketView, SessionView,
        crate::Page<SessionView>, ActivityView, crate::Page<ActivityView>, FirewallRuleDoc, FirewallActionDoc,
        FirewallBody, FirewallView,
    )),
    tags((name = "relay", description = "Agents, workspaces, tickets, terminal sessions and the IP firewall (docs/API.md)"))
)]
pub struct RelayApiDoc;

/// Mounts the relay's routes.
pub(crate) fn configure(config: &mut web::ServiceConfig) {
    config
        .service(routes::mint_agent_token)
        .service(routes::revoke_agent_token)
        .service(routes::list_agents)
        .service(routes::issue_ticket)
        .service(routes::list_sessions)
        .service(routes::list_activity)
        .service(routes::get_firewall)
        .service(routes::put_firewall)
        .service(ws::agent_connect)
        .service(ws::terminal);
}
