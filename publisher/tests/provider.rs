//! The provider clients against GitHub- and GitLab-shaped servers (`testkit::forge`) that accept exactly the
//! documented requests and answer with the documented shapes.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use domain::org::GitProviderKind;
use publisher::provider::{NewPullRequest, Provider, ProviderError};
use testkit::forge::ForgeServer;
use zeroize::Zeroizing;

const TOKEN: &str = "github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRSTUV";

fn client(kind: GitProviderKind, base: &str, repository: &str, token: &str) -> Provider {
    Provider::new(kind, Some(base), repository, Zeroizing::new(token.into()), Duration::from_secs(10)).unwrap().unwrap()
}

fn new<'a>(head: &'a str) -> NewPullRequest<'a> {
    NewPullRequest { head, base: "main", title: "Ship it", body: "Published through Gatehouse." }
}

#[tokio::test]
async fn github_pull_requests_are_opened_found_and_never_doubled() {
    let forge = ForgeServer::github(TOKEN, &["acme/web"]);
    for base in [forge.api_base(), format!("{}/api/v3", forge.api_base())] {
        let github = client(GitProviderKind::Github, &base, "https://github.example.com/acme/web.git", TOKEN);
        let head = format!("gatehouse/publish/{}", base.len());
        assert_eq!(github.find(&head).await, Ok(None));
        let opened = github.open(&new(&head)).await.unwrap();
        assert!(opened.url.contains("/acme/web/pull/"), "{opened:?}");
        // Twice: GitHub's 422 "already exists", and the lookup finds the first.
        assert_eq!(github.open(&new(&head)).await, Err(ProviderError::AlreadyExists));
        assert_eq!(github.find(&head).await, Ok(Some(opened.clone())));
        let pull = forge.pulls().into_iter().find(|pull| pull.number == opened.number).unwrap();
        assert_eq!((pull.head.as_str(), pull.base.as_str(), pull.title.as_str()), (head.as_str(), "main", "Ship it"));
    }
    let list = forge.requests().into_iter().find(|seen| seen.method == "GET").unwrap();
    assert!(list.path.starts_with("/repos/acme/web/pulls?head=acme%3Agatehouse%2Fpublish%2F"), "{}", list.path);
    assert!(list.path.contains("state=all"), "{}", list.path);

    // Wrong token, unknown repository: someone must act. Down or garbage: worth another try.
    let wrong = client(GitProviderKind::Github, &forge.api_base(), "git@github.com:acme/web.git", "nope");
    assert!(matches!(wrong.find("x").await, Err(ProviderError::Permanent(reason)) if reason.contains("401")));
    let missing = client(GitProviderKind::Github, &forge.api_base(), "https://github.com/acme/gone", TOKEN);
    assert!(matches!(missing.open(&new("x")).await, Err(ProviderError::Permanent(reason)) if reason.contains("404")));
    let github = client(GitProviderKind::Github, &forge.api_base(), "https://github.com/acme/web", TOKEN);
    forge.set_down(true);
    assert!(matches!(github.open(&new("y")).await, Err(ProviderError::Transient(_))));
    forge.set_down(false);
    forge.answer_garbage_next();
    assert!(
        matches!(github.find("y").await, Err(ProviderError::Transient(reason)) if reason.contains("documented JSON"))
    );
    // A lost answer: the pull request exists though the client saw an error; the lookup finds it.
    forge.lose_next_create_answer();
    assert!(matches!(github.open(&new("lost")).await, Err(ProviderError::Transient(_))));
    assert!(github.find("lost").await.unwrap().is_some());
}

#[tokio::test]
async fn gitlab_merge_requests_of_nested_projects() {
    let forge = ForgeServer::gitlab(TOKEN, &["acme/apps/web"]);
    let gitlab =
        client(GitProviderKind::Gitlab, &forge.api_base(), "https://gitlab.example.com/acme/apps/web.git", TOKEN);
    let opened = gitlab.open(&new("gatehouse/publish/1")).await.unwrap();
    assert_eq!(opened.number, 1);
    assert!(opened.url.ends_with("/acme/apps/web/-/merge_requests/1"), "{opened:?}");
    // GitLab's 409 for a second open merge request of the branch.
    assert_eq!(gitlab.open(&new("gatehouse/publish/1")).await, Err(ProviderError::AlreadyExists));
    assert_eq!(gitlab.find("gatehouse/publish/1").await, Ok(Some(opened)));
    assert_eq!(gitlab.find("gatehouse/publish/2").await, Ok(None));
    let create = forge.requests().into_iter().find(|seen| seen.method == "POST").unwrap();
    assert_eq!(create.path, "/api/v4/projects/acme%2Fapps%2Fweb/merge_requests");
    let body: serde_json::Value = serde_json::from_str(&create.body).unwrap();
    assert_eq!(body["source_branch"], "gatehouse/publish/1");
    assert_eq!(body["target_branch"], "main");
}

#[test]
fn the_local_provider_has_no_client_and_bad_repositories_are_refused() {
    let local =
        Provider::new(GitProviderKind::Local, None, "/srv/git/web.git", Zeroizing::default(), Duration::from_secs(1));
    assert!(matches!(local, Ok(None)));
    let on_disk = Provider::new(
        GitProviderKind::Github,
        None,
        "/srv/git/web.git",
        Zeroizing::new(TOKEN.into()),
        Duration::from_secs(1),
    );
    assert!(matches!(on_disk, Err(ProviderError::Permanent(reason)) if reason.contains("not a github repository URL")));
    let nested = Provider::new(
        GitProviderKind::Github,
        None,
        "https://github.com/a/b/c",
        Zeroizing::new(TOKEN.into()),
        Duration::from_secs(1),
    );
    assert!(matches!(nested, Err(ProviderError::Permanent(_))));
}
