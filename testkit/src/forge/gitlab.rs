//! GitLab's REST API v4 for merge requests: "Create MR" and "List project merge requests"
//! (docs.gitlab.com/api/merge_requests).
//!
//! Enforced: the route `/api/v4/projects/:id/merge_requests` on the raw path (else 404 `{"error":"404 Not
//! Found"}`; other methods 405), `PRIVATE-TOKEN: T` or `Authorization: Bearer T` (else 401 `{"message":"401
//! Unauthorized"}`), a known project by numeric id or URL-encoded path, ignoring case (else 404 `{"message":"404
//! Project Not Found"}`). Create takes its parameters from the query and a JSON or urlencoded form body (another
//! content type, multipart included: 415) and wants `title`, `source_branch`, `target_branch` (else 400
//! `{"error":"… is missing"}`), different branches (else 422 `{"message":["You can't use same project/branch for
//! source and target"]}`), with a git root branches that exist (else 400
//! `{"message":{"source_branch":["does not exist"]}}`), and no open merge request for the same source and target
//! branches (else 409 `{"message":["Another open merge request already exists for
//! this source branch: !IID"]}`, GitLab's `validate_branches`). A `Draft:` title prefix makes a draft.
//!
//! The list filters by `state` (`opened`, `closed`, `merged`, `locked` or `all`, the default), `source_branch`,
//! `target_branch`, `sort`, `page` and `per_page` (20 by default), newest first.

use hyper::StatusCode;
use serde_json::{json, Map, Value};

use super::{branch_sha, paginate, pair, split_query, Pull, Record, Reply, SeenRequest, Shared};
use crate::serve::{json, percent_decode};

/// The account the token belongs to.
const USERNAME: &str = "gatehouse-bot";

fn reply(status: StatusCode, body: Value) -> Reply {
    Reply { create: false, response: json(status, &body) }
}

pub(super) async fn handle(shared: &Shared, seen: &SeenRequest) -> Reply {
    let (path, query) = split_query(&seen.path);
    let segments: Vec<&str> = path.trim_end_matches('/').split('/').collect();
    // Split on the raw path: `group%2Frepo` is one segment, an unencoded `group/repo` is an unknown route.
    let ["", "api", "v4", "projects", id, "merge_requests"] = segments.as_slice() else {
        return reply(StatusCode::NOT_FOUND, json!({"error": "404 Not Found"}));
    };
    let create = match seen.method.as_str() {
        "POST" => true,
        "GET" => false,
        _ => return reply(StatusCode::METHOD_NOT_ALLOWED, json!({"error": "405 Not Allowed"})),
    };
    let mut reply = merge_requests(shared, seen, &percent_decode(id), create, &query).await;
    reply.create = create;
    reply
}

/// The merge requests endpoint of project `id` (numeric or a path), once routed.
async fn merge_requests(
    shared: &Shared,
    seen: &SeenRequest,
    id: &str,
    create: bool,
    query: &[(String, String)],
) -> Reply {
    let bearer = seen.header("authorization").and_then(|header| {
        let (scheme, token) = header.trim().split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
    });
    let presented = seen.header("private-token").or(bearer);
    let (project, project_id, git_root) = {
        let state = shared.state.lock().unwrap();
        if presented != Some(state.token.as_str()) {
            return reply(StatusCode::UNAUTHORIZED, json!({"message": "401 Unauthorized"}));
        }
        let found = match id.parse::<u64>() {
            Ok(number) => state.repos.iter().find(|repo| repo.id == number),
            Err(_) => state.repos.iter().find(|repo| repo.path.eq_ignore_ascii_case(id)),
        };
        let Some(found) = found else {
            return reply(StatusCode::NOT_FOUND, json!({"message": "404 Project Not Found"}));
        };
        (found.path.clone(), found.id, state.git_root.clone())
    };
    if !create {
        return list(shared, &project, query);
    }

    let Some(params) = params(seen, query) else {
        let content_type = seen.header("content-type").unwrap_or_default();
        let error = format!("The provided content-type '{content_type}' is not supported.");
        return reply(StatusCode::UNSUPPORTED_MEDIA_TYPE, json!({"error": error}));
    };
    let text = |name: &str| match params.get(name) {
        Some(Value::String(text)) => Some(text.clone()),
        Some(Value::Number(number)) => Some(number.to_string()),
        Some(Value::Bool(flag)) => Some(flag.to_string()),
        _ => None,
    };
    let flag = |name: &str| text(name).is_some_and(|value| value == "true" || value == "1");
    let problems: Vec<String> = ["title", "source_branch", "target_branch"]
        .into_iter()
        .filter_map(|name| match text(name) {
            None => Some(format!("{name} is missing")),
            Some(value) if value.trim().is_empty() => Some(format!("{name} is empty")),
            Some(_) => None,
        })
        .collect();
    let (true, Some(title), Some(source), Some(target)) =
        (problems.is_empty(), text("title"), text("source_branch"), text("target_branch"))
    else {
        return reply(StatusCode::BAD_REQUEST, json!({"error": problems.join(", ")}));
    };
    if source == target {
        let message = "You can't use same project/branch for source and target";
        return reply(StatusCode::UNPROCESSABLE_ENTITY, json!({"message": [message]}));
    }
    let source_sha = branch_sha(git_root.as_deref(), &project, &source).await;
    let target_sha = branch_sha(git_root.as_deref(), &project, &target).await;
    for (name, sha) in [("source_branch", &source_sha), ("target_branch", &target_sha)] {
        if sha.is_none() {
            return reply(StatusCode::BAD_REQUEST, json!({"message": {name: ["does not exist"]}}));
        }
    }

    let mut state = shared.state.lock().unwrap();
    let conflicting = state.pulls.iter().find(|record| {
        let pull = &record.pull;
        pull.open && pull.repo == project && pull.head == source && pull.base == target
    });
    if let Some(conflicting) = conflicting {
        let message =
            format!("Another open merge request already exists for this source branch: !{}", conflicting.pull.number);
        return reply(StatusCode::CONFLICT, json!({"message": [message]}));
    }
    let iid = state.repos.iter_mut().find(|repo| repo.id == project_id).map_or(0, |repo| {
        repo.next_number += 1;
        repo.next_number - 1
    });
    let id = state.next_id;
    state.next_id += 1;
    let draft = ["draft:", "[draft]", "(draft)"].iter().any(|prefix| title.to_ascii_lowercase().starts_with(prefix));
    let record = Record {
        pull: Pull {
            repo: project.clone(),
            number: iid,
            url: format!("{}/{project}/-/merge_requests/{iid}", shared.base()),
            head: source,
            base: target,
            title,
            body: text("description"),
            draft,
            open: true,
            sha: source_sha.unwrap_or_default(),
        },
        id,
        base_sha: target_sha.unwrap_or_default(),
        created_at: chrono::Utc::now(),
        flag: flag("squash"),
        remove_source_branch: flag("remove_source_branch"),
    };
    let body = render(shared, project_id, &record);
    state.pulls.push(record);
    reply(StatusCode::CREATED, body)
}

/// The parameters of a create: the query's, overridden by a JSON or form body's; `None` for another body.
fn params(seen: &SeenRequest, query: &[(String, String)]) -> Option<Map<String, Value>> {
    let mut params: Map<String, Value> =
        query.iter().map(|(name, value)| (name.clone(), Value::String(value.clone()))).collect();
    let content_type = seen.header("content-type").unwrap_or_default().to_ascii_lowercase();
    if seen.body.trim().is_empty() {
        return Some(params);
    }
    if content_type.starts_with("application/json") {
        let Ok(Value::Object(body)) = serde_json::from_str(&seen.body) else {
            // Grape answers a malformed JSON body with 400 too; no parameter then counts as given.
            return Some(Map::new());
        };
        params.extend(body);
    } else if content_type.starts_with("application/x-www-form-urlencoded") {
        let pairs: Vec<(String, String)> = serde_urlencoded::from_str(&seen.body).unwrap_or_default();
        params.extend(pairs.into_iter().map(|(name, value)| (name, Value::String(value))));
    } else {
        return None;
    }
    Some(params)
}

fn list(shared: &Shared, project: &str, query: &[(String, String)]) -> Reply {
    let state_filter = pair(query, "state").unwrap_or("all");
    if !["opened", "closed", "locked", "merged", "all"].contains(&state_filter) {
        return reply(StatusCode::BAD_REQUEST, json!({"error": "state does not have a valid value"}));
    }
    let source = pair(query, "source_branch");
    let target = pair(query, "target_branch");
    let state = shared.state.lock().unwrap();
    let project_id = state.repos.iter().find(|repo| repo.path == project).map_or(0, |repo| repo.id);
    let mut found: Vec<&Record> = state
        .pulls
        .iter()
        .filter(|record| {
            let pull = &record.pull;
            let matches_state = match state_filter {
                "all" => true,
                "opened" => pull.open,
                "closed" => !pull.open,
                _ => false,
            };
            pull.repo == project
                && matches_state
                && source.is_none_or(|source| pull.head == source)
                && target.is_none_or(|target| pull.base == target)
        })
        .collect();
    if pair(query, "sort") != Some("asc") {
        found.reverse();
    }
    let page = paginate(found, query, 20).into_iter().map(|record| render(shared, project_id, record)).collect();
    reply(StatusCode::OK, Value::Array(page))
}

/// A merge request in GitLab's shape (the fields clients read, with GitLab's names and types).
fn render(shared: &Shared, project_id: u64, record: &Record) -> Value {
    let pull = &record.pull;
    let time = record.created_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let author = json!({"id": 1, "username": USERNAME, "name": "Gatehouse", "state": "active",
                        "web_url": format!("{}/{USERNAME}", shared.base())});
    let reference = format!("!{}", pull.number);
    let mut first = json!({
        "id": record.id,
        "iid": pull.number,
        "project_id": project_id,
        "title": pull.title,
        "description": pull.body,
        "state": if pull.open { "opened" } else { "closed" },
        "created_at": time,
        "updated_at": time,
        "merged_by": null,
        "merged_at": null,
        "closed_by": null,
        "closed_at": if pull.open { Value::Null } else { Value::String(time.clone()) },
        "target_branch": pull.base,
        "source_branch": pull.head,
    });
    // Two halves: one `json!` this size exceeds the macro recursion limit.
    let rest = json!({
        "user_notes_count": 0,
        "upvotes": 0,
        "downvotes": 0,
        "author": author,
        "assignees": [],
        "assignee": null,
        "reviewers": [],
        "source_project_id": project_id,
        "target_project_id": project_id,
        "labels": [],
        "draft": pull.draft,
        "work_in_progress": pull.draft,
        "milestone": null,
        "merge_when_pipeline_succeeds": false,
        "merge_status": "checking",
        "detailed_merge_status": "checking",
        "sha": pull.sha,
        "merge_commit_sha": null,
        "squash_commit_sha": null,
        "discussion_locked": null,
        "should_remove_source_branch": null,
        "force_remove_source_branch": record.remove_source_branch,
        "squash": record.flag,
        "has_conflicts": false,
        "blocking_discussions_resolved": true,
        "references": {"short": reference, "relative": reference, "full": format!("{}{reference}", pull.repo)},
        "web_url": pull.url,
    });
    if let (Value::Object(first), Value::Object(rest)) = (&mut first, rest) {
        first.extend(rest);
    }
    first
}
