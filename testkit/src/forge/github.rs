//! GitHub's REST API for pull requests: "Create a pull request" and "List pull requests"
//! (docs.github.com/rest/pulls/pulls).
//!
//! Enforced, in GitHub's order: a `User-Agent` (else 403 and GitHub's short text page), a supported
//! `X-GitHub-Api-Version` when one is sent (`2022-11-28` or `2026-03-10`, else 400), `Authorization: Bearer T`
//! or `token T` (else 401 `Requires authentication` or `Bad credentials`), a known repository (else 404, names
//! compared ignoring case), then the body: JSON (else 400 `Problems parsing JSON`) with `title`, `head` and
//! `base` strings (else 422 `missing_field`), `head` as `branch` or `owner:branch` of the same owner (forks are
//! not modelled: else 422 `invalid`), different branches (else 422 `No commits between …`), no open pull
//! request for the same head and base (else 422 `A pull request already exists for owner:branch.`). `issue`
//! (turning an issue into a pull request) is refused as invalid. `Accept` is not checked.
//!
//! The list filters by `state` (`open` by default, `closed`, `all`), `head` in `owner:branch` form (GitHub
//! ignores a `head` without the owner and lists everything: so does this), `base`, `direction`, `page` and
//! `per_page` (30 by default), newest first.

use hyper::StatusCode;
use serde_json::{json, Value};

use super::{branch_sha, paginate, pair, split_query, Pull, Record, Reply, SeenRequest, Shared};
use crate::serve::{json, respond};

const CREATE_DOCS: &str = "https://docs.github.com/rest/pulls/pulls#create-a-pull-request";
const LIST_DOCS: &str = "https://docs.github.com/rest/pulls/pulls#list-pull-requests";
const VERSIONS: [&str; 2] = ["2022-11-28", "2026-03-10"];
/// The account the token belongs to.
const LOGIN: &str = "gatehouse-bot";

/// GitHub's error body. (`create` is set by `handle` once the route is known.)
fn error(status: StatusCode, message: &str, docs: &str) -> Reply {
    let body = json!({"message": message, "documentation_url": docs, "status": status.as_u16().to_string()});
    Reply { create: false, response: json(status, &body) }
}

/// 422 Validation Failed with GitHub's `errors` list.
fn invalid(errors: Value) -> Reply {
    let body =
        json!({"message": "Validation Failed", "errors": errors, "documentation_url": CREATE_DOCS, "status": "422"});
    Reply { create: false, response: json(StatusCode::UNPROCESSABLE_ENTITY, &body) }
}

pub(super) async fn handle(shared: &Shared, seen: &SeenRequest) -> Reply {
    if seen.header("user-agent").is_none_or(|agent| agent.trim().is_empty()) {
        let page = "Request forbidden by administrative rules. Please make sure your request has a User-Agent header \
                    (https://docs.github.com/en/rest/overview/resources-in-the-rest-api#user-agent-required). \
                    Check https://developer.github.com for other possible causes.\n";
        return Reply { create: false, response: respond(StatusCode::FORBIDDEN, "text/html", page) };
    }
    if let Some(version) = seen.header("x-github-api-version").filter(|version| !VERSIONS.contains(version)) {
        let message = format!("API version {version} is not supported.");
        return error(
            StatusCode::BAD_REQUEST,
            &message,
            "https://docs.github.com/rest/about-the-rest-api/api-versions",
        );
    }
    let (path, query) = split_query(&seen.path);
    // GitHub Enterprise Server serves the same API under /api/v3.
    let path = path.strip_prefix("/api/v3").unwrap_or(path);
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (owner, name, create) = match (seen.method.as_str(), segments.as_slice()) {
        ("POST", ["repos", owner, name, "pulls"]) => (*owner, *name, true),
        ("GET", ["repos", owner, name, "pulls"]) => (*owner, *name, false),
        _ => return error(StatusCode::NOT_FOUND, "Not Found", "https://docs.github.com/rest"),
    };
    let mut reply = pulls(shared, seen, &format!("{owner}/{name}"), create, &query).await;
    reply.create = create;
    reply
}

/// The pulls endpoint of `wanted` (`owner/repo` as requested), once routed.
async fn pulls(shared: &Shared, seen: &SeenRequest, wanted: &str, create: bool, query: &[(String, String)]) -> Reply {
    let docs = if create { CREATE_DOCS } else { LIST_DOCS };
    let presented = seen.header("authorization").and_then(|header| {
        let (scheme, token) = header.trim().split_once(' ')?;
        (scheme.eq_ignore_ascii_case("bearer") || scheme.eq_ignore_ascii_case("token")).then(|| token.trim())
    });
    let (repo, git_root) = {
        let state = shared.state.lock().unwrap();
        match presented {
            None => return error(StatusCode::UNAUTHORIZED, "Requires authentication", "https://docs.github.com/rest"),
            Some(token) if token != state.token => {
                return error(StatusCode::UNAUTHORIZED, "Bad credentials", "https://docs.github.com/rest")
            }
            Some(_) => {}
        }
        let Some(repo) = state.repos.iter().find(|repo| repo.path.eq_ignore_ascii_case(wanted)) else {
            return error(StatusCode::NOT_FOUND, "Not Found", docs);
        };
        (repo.path.clone(), state.git_root.clone())
    };
    if create {
        create_pull(shared, seen, &repo, git_root.as_deref()).await
    } else {
        list_pulls(shared, &repo, query)
    }
}

async fn create_pull(shared: &Shared, seen: &SeenRequest, repo: &str, git_root: Option<&std::path::Path>) -> Reply {
    let Ok(Value::Object(fields)) = serde_json::from_str::<Value>(&seen.body) else {
        return error(StatusCode::BAD_REQUEST, "Problems parsing JSON", CREATE_DOCS);
    };
    let text = |name: &str| fields.get(name).and_then(Value::as_str).map(str::to_string);
    if fields.get("issue").is_some_and(|issue| !issue.is_null()) {
        return invalid(json!([{"resource": "PullRequest", "field": "issue", "code": "invalid"}]));
    }
    let missing: Vec<Value> = ["title", "head", "base"]
        .into_iter()
        .filter(|name| text(name).is_none())
        .map(|name| json!({"resource": "PullRequest", "field": name, "code": "missing_field"}))
        .collect();
    let (Some(title), Some(head), Some(base)) = (text("title"), text("head"), text("base")) else {
        return invalid(Value::Array(missing));
    };
    let owner = repo.split('/').next().unwrap_or_default();
    let head = match head.split_once(':') {
        None => head,
        Some((head_owner, branch)) if head_owner.eq_ignore_ascii_case(owner) => branch.to_string(),
        Some(_) => return invalid(json!([{"resource": "PullRequest", "field": "head", "code": "invalid"}])),
    };
    let Some(head_sha) = branch_sha(git_root, repo, &head).await else {
        return invalid(json!([{"resource": "PullRequest", "field": "head", "code": "invalid"}]));
    };
    let Some(base_sha) = branch_sha(git_root, repo, &base).await else {
        return invalid(json!([{"resource": "PullRequest", "field": "base", "code": "invalid"}]));
    };
    if head == base || (git_root.is_some() && head_sha == base_sha) {
        let message = format!("No commits between {base} and {head}");
        return invalid(json!([{"resource": "PullRequest", "code": "custom", "message": message}]));
    }

    let mut state = shared.state.lock().unwrap();
    let exists = state.pulls.iter().any(|record| {
        let pull = &record.pull;
        pull.open && pull.repo == repo && pull.head == head && pull.base == base
    });
    if exists {
        let message = format!("A pull request already exists for {owner}:{head}.");
        return invalid(json!([{"resource": "PullRequest", "code": "custom", "message": message}]));
    }
    let known = state.repos.iter_mut().find(|known| known.path == repo).map(|known| {
        known.next_number += 1;
        known.next_number - 1
    });
    let number = known.unwrap_or_default();
    let id = state.next_id;
    state.next_id += 1;
    let record = Record {
        pull: Pull {
            repo: repo.to_string(),
            number,
            url: format!("{}/{repo}/pull/{number}", shared.base()),
            head,
            base,
            title,
            body: text("body"),
            draft: fields.get("draft").and_then(Value::as_bool).unwrap_or(false),
            open: true,
            sha: head_sha,
        },
        id,
        base_sha,
        created_at: chrono::Utc::now(),
        flag: fields.get("maintainer_can_modify").and_then(Value::as_bool).unwrap_or(true),
        remove_source_branch: false,
    };
    let body = render(shared, &state.repos, &record);
    state.pulls.push(record);
    let mut response = json(StatusCode::CREATED, &body);
    if let Some(location) = body["url"].as_str().and_then(|url| url.parse().ok()) {
        response.headers_mut().insert("location", location);
    }
    Reply { create: false, response }
}

fn list_pulls(shared: &Shared, repo: &str, query: &[(String, String)]) -> Reply {
    let state_filter = pair(query, "state").unwrap_or("open");
    if !["open", "closed", "all"].contains(&state_filter) {
        let errors = json!([{"resource": "Issue", "field": "state", "code": "invalid"}]);
        let body =
            json!({"message": "Validation Failed", "errors": errors, "documentation_url": LIST_DOCS, "status": "422"});
        return Reply { create: false, response: json(StatusCode::UNPROCESSABLE_ENTITY, &body) };
    }
    // `user:ref-name` only: GitHub ignores a head filter without the owner.
    let head = pair(query, "head").and_then(|head| head.split_once(':'));
    let base = pair(query, "base");
    let state = shared.state.lock().unwrap();
    let mut found: Vec<&Record> = state
        .pulls
        .iter()
        .filter(|record| {
            let pull = &record.pull;
            let owner = pull.repo.split('/').next().unwrap_or_default();
            pull.repo == repo
                && (state_filter == "all" || pull.open == (state_filter == "open"))
                && head.is_none_or(|(user, branch)| user.eq_ignore_ascii_case(owner) && pull.head == branch)
                && base.is_none_or(|base| pull.base == base)
        })
        .collect();
    if pair(query, "direction") != Some("asc") {
        found.reverse();
    }
    let page: Vec<Value> =
        paginate(found, query, 30).into_iter().map(|record| render(shared, &state.repos, record)).collect();
    Reply { create: false, response: json(StatusCode::OK, &Value::Array(page)) }
}

/// A pull request in GitHub's shape (the fields clients read, with GitHub's names and types).
fn render(shared: &Shared, repos: &[super::Repo], record: &Record) -> Value {
    let base_url = shared.base();
    let pull = &record.pull;
    let (owner, name) = pull.repo.split_once('/').unwrap_or((&pull.repo, ""));
    let repo_id = repos.iter().find(|repo| repo.path == pull.repo).map_or(0, |repo| repo.id);
    let api = format!("{base_url}/repos/{}", pull.repo);
    let user = |login: &str, id: u64, kind: &str| {
        json!({"login": login, "id": id, "node_id": format!("U_fake{id}"), "type": kind,
               "url": format!("{base_url}/users/{login}"), "html_url": format!("{base_url}/{login}")})
    };
    let owner_user = user(owner, 2, "Organization");
    let repository = json!({
        "id": repo_id, "node_id": format!("R_fake{repo_id}"), "name": name, "full_name": pull.repo,
        "private": true, "owner": owner_user, "html_url": format!("{base_url}/{}", pull.repo), "url": api,
    });
    let time = record.created_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let end = |branch: &str, sha: &str| {
        let label = format!("{owner}:{branch}");
        json!({"label": label, "ref": branch, "sha": sha, "user": owner_user, "repo": repository})
    };
    json!({
        "url": format!("{api}/pulls/{}", pull.number),
        "id": record.id,
        "node_id": format!("PR_fake{}", record.id),
        "html_url": pull.url,
        "diff_url": format!("{}.diff", pull.url),
        "patch_url": format!("{}.patch", pull.url),
        "issue_url": format!("{api}/issues/{}", pull.number),
        "number": pull.number,
        "state": if pull.open { "open" } else { "closed" },
        "locked": false,
        "title": pull.title,
        "user": user(LOGIN, 1, "User"),
        "body": pull.body,
        "labels": [],
        "created_at": time,
        "updated_at": time,
        "closed_at": if pull.open { Value::Null } else { Value::String(time.clone()) },
        "merged_at": null,
        "merge_commit_sha": null,
        "assignee": null,
        "assignees": [],
        "requested_reviewers": [],
        "head": end(&pull.head, &pull.sha),
        "base": end(&pull.base, &record.base_sha),
        "author_association": "MEMBER",
        "draft": pull.draft,
        "merged": false,
        "mergeable": null,
        "maintainer_can_modify": record.flag,
    })
}
