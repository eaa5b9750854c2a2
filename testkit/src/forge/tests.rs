use std::process::Command;

use reqwest::{Client, StatusCode};
use serde_json::{json, Value};

use super::*;

fn client() -> Client {
    Client::builder().user_agent("gatehouse-tests").build().unwrap()
}

async fn send(request: reqwest::RequestBuilder) -> (StatusCode, Value) {
    let response = request.send().await.unwrap();
    let status = response.status();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

#[tokio::test]
async fn github_creates_lists_and_refuses_a_second_open_pull_request() {
    let forge = ForgeServer::github("ghp_token", &["Acme/web"]);
    let pulls = format!("{}/repos/acme/web/pulls", forge.api_base());
    let create = |url: &str, body: Value| {
        client()
            .post(url)
            .bearer_auth("ghp_token")
            .header("accept", "application/vnd.github+json")
            .header("x-github-api-version", "2022-11-28")
            .json(&body)
    };

    let body = json!({"title": "Publish", "head": "acme:feature", "base": "main", "body": "Why", "draft": true});
    let (status, pull) = send(create(&pulls, body)).await;
    assert_eq!(status, StatusCode::CREATED, "{pull}");
    assert_eq!(pull["number"], 1);
    assert_eq!(pull["state"], "open");
    assert_eq!(pull["draft"], true);
    assert_eq!(pull["head"]["ref"], "feature");
    assert_eq!(pull["head"]["label"], "Acme:feature");
    assert_eq!(pull["head"]["repo"]["full_name"], "Acme/web");
    assert_eq!(pull["base"]["ref"], "main");
    assert_eq!(pull["url"], format!("{}/repos/Acme/web/pulls/1", forge.base()));
    let created = forge.pulls();
    assert_eq!(created.len(), 1);
    assert_eq!(pull["html_url"], created[0].url);
    assert_eq!((created[0].head.as_str(), created[0].body.as_deref()), ("feature", Some("Why")));

    // The same branches again, head without the owner: GitHub's duplicate answer.
    let (status, error) = send(create(&pulls, json!({"title": "Again", "head": "feature", "base": "main"}))).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(error["message"], "Validation Failed");
    assert_eq!(error["errors"][0]["message"], "A pull request already exists for Acme:feature.");

    // GitHub Enterprise's prefix and the older `token` scheme.
    let enterprise = format!("{}/api/v3/repos/acme/web/pulls", forge.base());
    let request = client().post(&enterprise).header("authorization", "token ghp_token");
    let (status, other) = send(request.json(&json!({"title": "Other", "head": "other", "base": "main"}))).await;
    assert_eq!(status, StatusCode::CREATED, "{other}");
    assert_eq!(other["number"], 2);

    let list = |query: &str| client().get(format!("{pulls}?{query}")).bearer_auth("ghp_token");
    let (_, found) = send(list("head=acme:feature&state=all")).await;
    assert_eq!(found.as_array().unwrap().len(), 1);
    assert_eq!(found[0]["number"], 1);
    // GitHub ignores a head without its owner: everything comes back, newest first.
    let (_, found) = send(list("head=feature")).await;
    let numbers: Vec<_> = found.as_array().unwrap().iter().map(|pull| pull["number"].clone()).collect();
    assert_eq!(numbers, [json!(2), json!(1)]);
    let (_, found) = send(list("state=closed")).await;
    assert_eq!(found, json!([]));

    assert!(forge.close_pull("acme/web", 1));
    let (_, found) = send(list("state=closed&head=Acme:feature&base=main")).await;
    assert_eq!(found[0]["state"], "closed");
    let (status, third) = send(create(&pulls, json!({"title": "Third", "head": "feature", "base": "main"}))).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(third["number"], 3);
}

#[tokio::test]
async fn github_refuses_what_github_refuses() {
    let forge = ForgeServer::github("ghp_token", &["acme/web"]);
    let pulls = format!("{}/repos/acme/web/pulls", forge.api_base());
    let body = json!({"title": "Publish", "head": "feature", "base": "main"});

    let anonymous = Client::new().post(&pulls).bearer_auth("ghp_token").json(&body);
    let (status, page) = send(anonymous).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(page.as_str().unwrap().contains("User-Agent"));

    let (status, error) = send(client().post(&pulls).json(&body)).await;
    assert_eq!((status, &error["message"]), (StatusCode::UNAUTHORIZED, &json!("Requires authentication")));
    let (status, error) = send(client().post(&pulls).bearer_auth("wrong").json(&body)).await;
    assert_eq!((status, &error["message"]), (StatusCode::UNAUTHORIZED, &json!("Bad credentials")));

    let elsewhere = format!("{}/repos/acme/unknown/pulls", forge.api_base());
    let (status, error) = send(client().post(&elsewhere).bearer_auth("ghp_token").json(&body)).await;
    assert_eq!((status, &error["message"]), (StatusCode::NOT_FOUND, &json!("Not Found")));

    let request = client().post(&pulls).bearer_auth("ghp_token").header("x-github-api-version", "2021-01-01");
    assert_eq!(send(request.json(&body)).await.0, StatusCode::BAD_REQUEST);

    let request = client().post(&pulls).bearer_auth("ghp_token").body("{not json");
    let (status, error) = send(request).await;
    assert_eq!((status, &error["message"]), (StatusCode::BAD_REQUEST, &json!("Problems parsing JSON")));

    let (status, error) = send(client().post(&pulls).bearer_auth("ghp_token").json(&json!({"title": "x"}))).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let fields: Vec<_> = error["errors"].as_array().unwrap().iter().map(|error| error["field"].clone()).collect();
    assert_eq!(fields, [json!("head"), json!("base")]);
    assert_eq!(error["errors"][0]["code"], "missing_field");

    let same = json!({"title": "x", "head": "main", "base": "main"});
    let (status, error) = send(client().post(&pulls).bearer_auth("ghp_token").json(&same)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(error["errors"][0]["message"], "No commits between main and main");
    let fork = json!({"title": "x", "head": "someone:feature", "base": "main"});
    let (status, error) = send(client().post(&pulls).bearer_auth("ghp_token").json(&fork)).await;
    assert_eq!((status, &error["errors"][0]["code"]), (StatusCode::UNPROCESSABLE_ENTITY, &json!("invalid")));

    assert!(forge.pulls().is_empty());
    let seen = forge.requests();
    assert_eq!(seen.len(), 9);
    assert_eq!(seen[1].header("Authorization"), None);
    assert_eq!(seen[2].header("authorization"), Some("Bearer wrong"));
    assert_eq!(seen[2].body, body.to_string());
}

#[tokio::test]
async fn gitlab_creates_lists_and_conflicts_like_gitlab() {
    let forge = ForgeServer::gitlab("glpat-token", &["group/sub/web", "group/other"]);
    let api = forge.api_base();
    let encoded = format!("{api}/projects/group%2Fsub%2Fweb/merge_requests");
    let body = json!({"source_branch": "feature", "target_branch": "main", "title": "Publish",
                      "description": "Why", "remove_source_branch": true, "squash": false});

    let (status, merge_request) =
        send(client().post(&encoded).header("private-token", "glpat-token").json(&body)).await;
    assert_eq!(status, StatusCode::CREATED, "{merge_request}");
    assert_eq!(merge_request["iid"], 1);
    assert_eq!(merge_request["project_id"], 1);
    assert_eq!(merge_request["state"], "opened");
    assert_eq!(merge_request["source_branch"], "feature");
    assert_eq!(merge_request["target_branch"], "main");
    assert_eq!(merge_request["description"], "Why");
    assert_eq!(merge_request["force_remove_source_branch"], true);
    assert_eq!(merge_request["references"]["full"], "group/sub/web!1");
    assert_eq!(merge_request["web_url"], format!("{}/group/sub/web/-/merge_requests/1", forge.base()));
    assert_eq!(forge.pulls()[0].url, merge_request["web_url"]);

    let (status, error) = send(client().post(&encoded).header("private-token", "glpat-token").json(&body)).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(error, json!({"message": ["Another open merge request already exists for this source branch: !1"]}));

    // By numeric id, a bearer token and a form body.
    let by_id = format!("{api}/projects/1/merge_requests");
    let form = [("source_branch", "other"), ("target_branch", "main"), ("title", "Draft: other")];
    let (status, second) = send(client().post(&by_id).bearer_auth("glpat-token").form(&form)).await;
    assert_eq!(status, StatusCode::CREATED, "{second}");
    assert_eq!((&second["iid"], &second["draft"]), (&json!(2), &json!(true)));

    let list = |query: &str| client().get(format!("{encoded}?{query}")).header("private-token", "glpat-token");
    let (status, found) = send(list("source_branch=feature&state=opened")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(found.as_array().unwrap().len(), 1);
    assert_eq!(found[0]["iid"], 1);
    let (_, found) = send(list("per_page=1")).await;
    assert_eq!(found[0]["iid"], 2);
    assert!(forge.close_pull("group/sub/web", 1));
    let (_, found) = send(list("state=opened")).await;
    assert_eq!(found.as_array().unwrap().len(), 1);

    // The other project numbers its own.
    let other = format!("{api}/projects/group%2Fother/merge_requests");
    let (_, first) = send(client().post(&other).header("private-token", "glpat-token").json(&body)).await;
    assert_eq!((&first["iid"], &first["project_id"]), (&json!(1), &json!(2)));
}

#[tokio::test]
async fn gitlab_refuses_what_gitlab_refuses() {
    let forge = ForgeServer::gitlab("glpat-token", &["group/sub/web"]);
    let api = forge.api_base();
    let encoded = format!("{api}/projects/group%2Fsub%2Fweb/merge_requests");
    let body = json!({"source_branch": "feature", "target_branch": "main", "title": "Publish"});
    let post = |url: &str| client().post(url).header("private-token", "glpat-token");

    let (status, error) = send(client().post(&encoded).json(&body)).await;
    assert_eq!((status, error), (StatusCode::UNAUTHORIZED, json!({"message": "401 Unauthorized"})));
    let (status, _) = send(client().post(&encoded).header("private-token", "wrong").json(&body)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    let (status, error) = send(post(&format!("{api}/projects/group/sub/web/merge_requests")).json(&body)).await;
    assert_eq!((status, error), (StatusCode::NOT_FOUND, json!({"error": "404 Not Found"})));
    let (status, error) = send(post(&format!("{api}/projects/group%2Fnope/merge_requests")).json(&body)).await;
    assert_eq!((status, error), (StatusCode::NOT_FOUND, json!({"message": "404 Project Not Found"})));

    let (status, error) = send(post(&encoded).json(&json!({"source_branch": "feature"}))).await;
    assert_eq!(
        (status, error),
        (StatusCode::BAD_REQUEST, json!({"error": "title is missing, target_branch is missing"}))
    );
    let same = json!({"source_branch": "main", "target_branch": "main", "title": "x"});
    let (status, error) = send(post(&encoded).json(&same)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(error["message"][0], "You can't use same project/branch for source and target");
    let (status, _) = send(post(&encoded).header("content-type", "text/plain").body("title=x")).await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert!(forge.pulls().is_empty());
}

#[tokio::test]
async fn a_lost_answer_still_creates_and_the_list_finds_it() {
    for forge in [ForgeServer::github("t", &["acme/web"]), ForgeServer::gitlab("t", &["acme/web"])] {
        let (create, list) = match forge.flavor() {
            Flavor::GitHub => {
                let url = format!("{}/repos/acme/web/pulls", forge.api_base());
                let body = json!({"title": "Publish", "head": "feature", "base": "main"});
                (client().post(&url).bearer_auth("t").json(&body), client().get(format!("{url}?head=acme:feature")))
            }
            Flavor::GitLab => {
                let url = format!("{}/projects/acme%2Fweb/merge_requests", forge.api_base());
                let body = json!({"title": "Publish", "source_branch": "feature", "target_branch": "main"});
                (client().post(&url).bearer_auth("t").json(&body), client().get(format!("{url}?source_branch=feature")))
            }
        };
        forge.lose_next_create_answer();
        let lost = create.try_clone().unwrap().send().await;
        assert!(lost.is_err(), "{lost:?}");
        assert_eq!(forge.pulls().len(), 1);

        let (status, found) = send(list.bearer_auth("t")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(found.as_array().unwrap().len(), 1, "{found}");
        // Only the next answer is lost: the retry is answered, as a duplicate.
        let (status, _) = send(create).await;
        assert!(status == StatusCode::UNPROCESSABLE_ENTITY || status == StatusCode::CONFLICT, "{status}");
    }
}

#[tokio::test]
async fn an_outage_and_a_garbled_answer_change_nothing() {
    let forge = ForgeServer::github("t", &["acme/web"]);
    let url = format!("{}/repos/acme/web/pulls", forge.api_base());
    let create =
        || client().post(&url).bearer_auth("t").json(&json!({"title": "x", "head": "feature", "base": "main"}));

    forge.set_down(true);
    let response = create().send().await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(response.text().await.unwrap().contains("503"));
    forge.set_down(false);

    forge.answer_garbage_next();
    let response = create().send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.json::<Value>().await.is_err());
    assert!(forge.pulls().is_empty());

    assert_eq!(send(create()).await.0, StatusCode::CREATED);
    assert_eq!(forge.requests().len(), 3);
}

#[test]
fn with_a_git_root_branches_must_exist_and_shas_are_real() {
    let dir = tempfile::tempdir().unwrap();
    let git = |args: &[&str]| {
        let output = Command::new("git")
            .current_dir(dir.path())
            .args(["-c", "user.name=Test", "-c", "user.email=test@example.com"])
            .args(args)
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8(output.stdout).unwrap().trim().to_string()
    };
    git(&["init", "-q", "--bare", "-b", "main", "remote/acme/web.git"]);
    git(&["init", "-q", "-b", "main", "work"]);
    git(&["-C", "work", "commit", "-q", "--allow-empty", "-m", "first"]);
    git(&["-C", "work", "push", "-q", "../remote/acme/web.git", "main"]);
    git(&["-C", "work", "commit", "-q", "--allow-empty", "-m", "second"]);
    git(&["-C", "work", "push", "-q", "../remote/acme/web.git", "main:feature"]);
    let feature = git(&["-C", "work", "rev-parse", "HEAD"]);

    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let github = ForgeServer::github("t", &["acme/web"]).with_git_root(&dir.path().join("remote"));
        let url = format!("{}/repos/acme/web/pulls", github.api_base());
        let create = |head: &str| {
            client().post(&url).bearer_auth("t").json(&json!({"title": "x", "head": head, "base": "main"}))
        };
        let (status, error) = send(create("missing")).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(error["errors"][0], json!({"resource": "PullRequest", "field": "head", "code": "invalid"}));
        let (status, pull) = send(create("feature")).await;
        assert_eq!(status, StatusCode::CREATED, "{pull}");
        assert_eq!(pull["head"]["sha"], feature);
        assert_eq!(github.pulls()[0].sha, feature);

        let gitlab = ForgeServer::gitlab("t", &["acme/web"]).with_git_root(&dir.path().join("remote"));
        let url = format!("{}/projects/acme%2Fweb/merge_requests", gitlab.api_base());
        let create = |source: &str| {
            let body = json!({"title": "x", "source_branch": source, "target_branch": "main"});
            client().post(&url).header("private-token", "t").json(&body)
        };
        let (status, error) = send(create("missing")).await;
        assert_eq!(
            (status, error),
            (StatusCode::BAD_REQUEST, json!({"message": {"source_branch": ["does not exist"]}}))
        );
        let (status, merge_request) = send(create("feature")).await;
        assert_eq!(status, StatusCode::CREATED, "{merge_request}");
        assert_eq!(merge_request["sha"], feature);
    });
}
