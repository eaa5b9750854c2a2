//! `/api/v1/publish-requests`, `/api/v1/approvals` and `/api/v1/trust-rules`: the publish workflow over HTTP.
//!
//! Commands go to the publishing and trust rules aggregates; lists and single requests come from the read models
//! (`publish_requests`, `publish_reviews`, `trust_rules`). A request just submitted may take a moment to reach the
//! lists; `GET /api/v1/publish-requests/{id}` waits for it (up to two seconds) when the aggregate knows it, so a
//! client can always read its own write.

use std::time::Duration as StdDuration;

use actix_web::http::StatusCode;
use actix_web::{delete, get, post, web, HttpRequest, HttpResponse};
use domain::publishing::values::{self, MAX_MESSAGE_CHARS, MAX_REASON_CHARS};
use domain::publishing::{
    BlueprintKey, CommitId, DiffSummary, Publishing, PublishingCommand, PublishingError, RequestId, RequestStatus,
    Subdomain, TrustMatch, WorkspaceId, PUBLISHING_ID,
};
use domain::roster::Role;
use domain::trust::{TrustCommand, TrustRules, TRUST_RULES_ID};
use domain::Email;
use projections::{PublishRequestRow, RequestFilter, ReviewRow, TimeKey, TrustRuleRow};
use relay::hub::TaskError;
use relay::task::{BaseKind, DiffBase, DiffReport, FailureKind, FileStatus, GitTask, TaskOutcome};
use serde::{Deserialize, Serialize};
use store::CommandError;

use crate::auth::Caller;
use crate::extract::{Json, OptionalJson, Path, Query};
use crate::{AppState, List, Problem, ProblemCode};

/// The publishing policy in force (from settings).
#[derive(Debug, Clone)]
pub struct PublishPolicy {
    /// Admin approvals a request needs (at least 1).
    pub approvals_required: u32,
    /// Whether approvals and rejections must give a reason.
    pub require_reason: bool,
    /// How long a request may stay pending before it expires.
    pub ttl: chrono::Duration,
    /// The largest patch recorded or shown, in bytes (at most 1 MiB); a longer one is cut at a line end.
    pub max_patch_bytes: usize,
    /// How long a diff or commit in the workspace may take, in seconds.
    pub git_timeout_secs: u64,
}

impl Default for PublishPolicy {
    fn default() -> Self {
        Self {
            approvals_required: 1,
            require_reason: false,
            ttl: chrono::Duration::days(7),
            max_patch_bytes: 128 * 1024,
            git_timeout_secs: 60,
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Wire types

/// A publish request submission. The commit and its diff are made by Gatehouse in the workspace (all changes but
/// ignored files, authored by the caller, with `message` as its message), never named by the client.
#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubmitRequest {
    /// The workspace to publish (1–128 of `A-Z a-z 0-9 . _ -`): one of the caller's own, running. Its blueprint is
    /// the control plane's fact, never the client's.
    pub workspace_id: String,
    /// A DNS label: 1–63 of `a-z 0-9 -`, no leading or trailing `-`, not reserved.
    pub subdomain: String,
    /// A message to reviewers, and the commit's message (1–4,000 characters).
    pub message: String,
}

/// An approval or rejection.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReviewInput {
    /// Why (for a rejection: feedback for the builder). Required when the policy says so; up to 2,000 characters.
    #[serde(default)]
    pub reason: Option<String>,
}

/// Diff summary as shown.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DiffView {
    /// Files changed.
    pub files: i64,
    /// Lines added.
    pub insertions: i64,
    /// Lines removed.
    pub deletions: i64,
    /// The patch (only on a single request), cut at `publish_max_patch_bytes`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub patch: Option<String>,
    /// Whether the patch is only the beginning of the diff.
    pub patch_truncated: bool,
    /// The commit the diff starts from: the workspace's last published commit, or where it left the blueprint's
    /// branch (absent for requests made before Gatehouse made the commit itself).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base_commit: Option<String>,
}

/// A failed delivery step.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DeliveryFailureView {
    /// `push` or `pull_request`.
    pub stage: String,
    /// What went wrong.
    pub reason: String,
    /// Whether it is retried automatically (with backoff, up to `publish_max_attempts`); otherwise an admin retries
    /// it (`POST /api/v1/publish-requests/{id}/retry`) once the cause is fixed.
    pub retryable: bool,
    /// When (RFC 3339).
    pub at: String,
}

/// What became of an approved request: its push and pull request.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DeliveryView {
    /// `queued`, `pushed` (final with the `local` provider), `pull_request_opened` or `failed`.
    pub status: String,
    /// The remote the commit was pushed to (credentials redacted).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remote: Option<String>,
    /// The branch (`gatehouse/publish/<request id>` by default).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub branch: Option<String>,
    /// The pull (merge) request's web page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pull_request_url: Option<String>,
    /// Its number (GitHub) or `iid` (GitLab).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pull_request_number: Option<i64>,
    /// The last failure, until a step succeeds or an admin retries.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure: Option<DeliveryFailureView>,
    /// Failed attempts since the last success or retry.
    pub attempts: i64,
}

impl DeliveryView {
    fn from_row(row: &PublishRequestRow) -> Option<Self> {
        let status = row.delivery_status.clone()?;
        let failure = match (&row.failure_stage, &row.failure_reason, &row.failure_at) {
            (Some(stage), Some(reason), Some(at)) => Some(DeliveryFailureView {
                stage: stage.clone(),
                reason: reason.clone(),
                retryable: row.failure_retryable.unwrap_or(false),
                at: at.clone(),
            }),
            _ => None,
        };
        Some(Self {
            status,
            remote: row.delivery_remote.clone(),
            branch: row.delivery_branch.clone(),
            pull_request_url: row.pull_request_url.clone(),
            pull_request_number: row.pull_request_number,
            failure,
            attempts: row.delivery_attempts,
        })
    }
}

/// One changed file of a diff preview.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ChangedFileView {
    /// Its path in the repository.
    pub path: String,
    /// `added`, `modified`, `deleted` or `type_changed`.
    pub status: String,
    /// Lines added (0 for a binary file).
    pub insertions: u64,
    /// Lines removed (0 for a binary file).
    pub deletions: u64,
    /// Whether git sees it as binary.
    pub binary: bool,
}

/// What publishing the workspace now would change, computed in the workspace by its agent.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DiffPreviewView {
    /// The workspace.
    pub workspace_id: String,
    /// The commit the diff starts from.
    pub base_commit: String,
    /// `published` (the workspace's last published commit) or `blueprint` (where it left the blueprint's branch: a
    /// first publish).
    pub base_kind: String,
    /// The workspace's `HEAD`.
    pub head_commit: String,
    /// Its current branch.
    pub branch: String,
    /// Files changed.
    pub files_changed: u64,
    /// Lines added.
    pub insertions: u64,
    /// Lines removed.
    pub deletions: u64,
    /// The changed files in path order (at most 10,000; `files_truncated` says when there are more).
    pub files: Vec<ChangedFileView>,
    /// Whether `files` stops short of `files_changed`.
    pub files_truncated: bool,
    /// The unified diff, cut at a line end at `publish_max_patch_bytes`.
    pub patch: String,
    /// Whether the patch was cut.
    pub patch_truncated: bool,
}

impl DiffPreviewView {
    fn new(workspace_id: &WorkspaceId, report: DiffReport) -> Self {
        let status = |status: FileStatus| match status {
            FileStatus::Added => "added",
            FileStatus::Modified => "modified",
            FileStatus::Deleted => "deleted",
            FileStatus::TypeChanged => "type_changed",
        };
        Self {
            workspace_id: workspace_id.to_string(),
            base_commit: report.base_commit,
            base_kind: match report.base_kind {
                BaseKind::Published => "published",
                BaseKind::Blueprint => "blueprint",
            }
            .into(),
            head_commit: report.head_commit,
            branch: report.branch,
            files_changed: report.files_changed,
            insertions: report.insertions,
            deletions: report.deletions,
            files: report
                .files
                .into_iter()
                .map(|file| ChangedFileView {
                    path: file.path,
                    status: status(file.status).into(),
                    insertions: file.insertions,
                    deletions: file.deletions,
                    binary: file.binary,
                })
                .collect(),
            files_truncated: report.files_truncated,
            patch: report.patch,
            patch_truncated: report.patch_truncated,
        }
    }
}

/// One step of a request's history.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ReviewView {
    /// `submitted`, `approval`, `approved`, `auto_approved`, `rejected`, `withdrawn`, `expired`, and for the
    /// delivery `pushed` (reason: the branch and remote), `pull_request_opened` (reason: its URL), `failed` (reason:
    /// `stage: why`) and `retried` (actor: the admin).
    pub kind: String,
    /// Who (`system` for a trust rule; absent for expiry).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    /// Reason or feedback.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// When (RFC 3339).
    pub at: String,
}

/// A publish request.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PublishRequestView {
    /// The request's id.
    pub id: String,
    /// The workspace.
    pub workspace_id: String,
    /// Its blueprint.
    pub blueprint_key: String,
    /// Where it would be published.
    pub subdomain: String,
    /// The builder.
    pub builder: String,
    /// The commit.
    pub commit_id: String,
    /// What changes.
    pub diff: DiffView,
    /// The builder's message.
    pub message: String,
    /// `pending`, `approved`, `rejected`, `withdrawn` or `expired`.
    pub status: String,
    /// Approvals needed.
    pub approvals_required: i64,
    /// Approvals so far.
    pub approvals: i64,
    /// RFC 3339.
    pub submitted_at: String,
    /// When a pending request expires (RFC 3339).
    pub expires_at: String,
    /// When it was decided (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decided_at: Option<String>,
    /// Who decided (`system` when a trust rule approved it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decided_by: Option<String>,
    /// The deciding reason or the rejection's feedback.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decision_reason: Option<String>,
    /// The trust rule that approved it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trust_rule_id: Option<String>,
    /// The request's version, as its ETag carries it.
    pub version: i64,
    /// Its push and pull request, once approved (absent before, and for requests made before delivery existed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delivery: Option<DeliveryView>,
    /// Every step, oldest first (only on a single request).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub history: Option<Vec<ReviewView>>,
}

impl PublishRequestView {
    /// The view of a read-model row, with its review history when given.
    pub fn from_row(row: PublishRequestRow, history: Option<Vec<ReviewRow>>) -> Self {
        let delivery = DeliveryView::from_row(&row);
        Self {
            delivery,
            id: row.request_id,
            workspace_id: row.workspace_id,
            blueprint_key: row.blueprint_key,
            subdomain: row.subdomain,
            builder: row.builder,
            commit_id: row.commit_id,
            diff: DiffView {
                files: row.files,
                insertions: row.insertions,
                deletions: row.deletions,
                patch: row.patch,
                patch_truncated: row.patch_truncated,
                base_commit: row.base_commit,
            },
            message: row.message,
            status: row.status,
            approvals_required: row.approvals_required,
            approvals: row.approvals,
            submitted_at: row.submitted_at,
            expires_at: row.expires_at,
            decided_at: row.decided_at,
            decided_by: row.decided_by,
            decision_reason: row.decision_reason,
            trust_rule_id: row.trust_rule_id,
            version: row.version,
            history: history.map(|steps| {
                steps
                    .into_iter()
                    .map(|step| ReviewView { kind: step.kind, actor: step.actor, reason: step.reason, at: step.at })
                    .collect()
            }),
        }
    }
}

/// A page of publish requests, in the list's order.
pub type PublishRequestPage = crate::Page<PublishRequestView>;

/// The outcome of a review or withdrawal, decided by the aggregate (the read model follows).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DecisionView {
    /// The request.
    pub id: String,
    /// Its status now.
    pub status: String,
    /// Approvals so far.
    pub approvals: usize,
    /// Approvals needed.
    pub approvals_required: u32,
    /// Its version now (the new ETag).
    pub version: u64,
}

/// Filters and paging of `GET /api/v1/publish-requests` (newest first).
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct RequestListQuery {
    /// `pending`, `approved`, `rejected`, `withdrawn` or `expired`.
    pub status: Option<String>,
    /// Only this blueprint.
    pub blueprint_key: Option<String>,
    /// Only this builder (members may only name themselves, and see only their own requests).
    pub builder: Option<String>,
    /// Only this workspace.
    pub workspace_id: Option<String>,
}

/// Filters and paging of the approvals queue (oldest first).
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct QueueQuery {
    /// Only this blueprint.
    pub blueprint_key: Option<String>,
}

/// A trust rule to create.
#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TrustRuleInput {
    /// The trusted user.
    pub email: String,
    /// One blueprint; absent or null trusts the user for every blueprint.
    #[serde(default)]
    pub blueprint_key: Option<String>,
    /// Why (up to 2,000 characters).
    #[serde(default)]
    pub description: Option<String>,
}

/// A trust rule.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TrustRuleView {
    /// The rule's id.
    pub id: String,
    /// The trusted user.
    pub email: String,
    /// The blueprint; absent means every blueprint.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub blueprint_key: Option<String>,
    /// Why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The admin who created it.
    pub granted_by: String,
    /// When (RFC 3339).
    pub granted_at: String,
}

impl From<TrustRuleRow> for TrustRuleView {
    fn from(row: TrustRuleRow) -> Self {
        Self {
            id: row.rule_id,
            email: row.email,
            blueprint_key: row.blueprint_key,
            description: row.description,
            granted_by: row.granted_by,
            granted_at: row.granted_at,
        }
    }
}

/// A page of trust rules, in id order.
pub type TrustRulePage = crate::Page<TrustRuleView>;

/// A dry run's question.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct EvaluateQuery {
    /// The user (members may only ask about themselves).
    pub email: String,
    /// The blueprint.
    pub blueprint_key: String,
}

/// A dry run's answer: what a submission by `email` on `blueprint_key` would get now.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EvaluateView {
    /// The user asked about.
    pub email: String,
    /// The blueprint asked about.
    pub blueprint_key: String,
    /// Whether the publish would be approved on submission.
    pub auto_approved: bool,
    /// The matching rule.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<TrustRuleView>,
    /// The reason the system reviewer would record.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

// ---------------------------------------------------------------------------------------------------------------
// Helpers

fn not_found(what: &str) -> Problem {
    Problem::new(ProblemCode::NotFound, "Not found").detail(format!("No {what}."))
}

fn optional_text(field: &'static str, raw: Option<&str>, max: usize) -> Result<Option<String>, Problem> {
    match raw {
        None => Ok(None),
        Some(raw) if raw.trim().is_empty() => Ok(None),
        Some(raw) => values::text(field, raw, max).map(Some).map_err(Problem::from),
    }
}

/// The cursor of a list ordered by (submission time, request id).
#[derive(Debug, Clone)]
pub struct RequestKey(TimeKey);

impl crate::PageCursor for RequestKey {
    fn decode(raw: &str) -> Option<Self> {
        let key = crate::decode_page_key(raw).ok()?;
        RequestId::parse(&key.id).ok()?;
        Some(RequestKey(key))
    }
}

/// The cursor after `row` in a list ordered by (submission time, request id).
fn encode_key(row: &PublishRequestRow) -> String {
    crate::encode_page_key(&row.submitted_at, &row.request_id)
}

fn page(rows: Vec<PublishRequestRow>, limit: i64) -> PublishRequestPage {
    crate::Page::from_rows(rows, limit, encode_key, |row| PublishRequestView::from_row(row, None))
}

/// Runs a review-like command and reports where the request stands.
async fn decide(
    state: &AppState,
    caller: &Caller,
    request: &HttpRequest,
    request_id: RequestId,
    command: PublishingCommand,
    body: &[u8],
) -> Result<HttpResponse, Problem> {
    let if_match = request.headers().get("if-match").and_then(|value| value.to_str().ok()).unwrap_or_default();
    let fingerprint = format!("{}\n{if_match}\n{}", request.path(), String::from_utf8_lossy(body));
    crate::idempotency::run(state, caller, request, fingerprint, |attempt| async move {
        let answered = request_id.clone();
        let render = move |publishing: &Publishing, _: u64| {
            let current = publishing.request(&answered).ok_or_else(Problem::internal)?;
            let view = DecisionView {
                id: answered.to_string(),
                status: current.status.as_str().to_string(),
                approvals: current.approvals.len(),
                approvals_required: current.approvals_required,
                version: current.version,
            };
            Ok(crate::idempotency::Reply {
                status: StatusCode::OK,
                etag: Some(format!("\"{}\"", view.version)),
                body: serde_json::to_value(view).map_err(|_| Problem::internal())?,
                location: None,
            })
        };
        let hook = attempt.before_append(render.clone());
        // A lost race is decided again on the winner's state. That is safe with an If-Match too: the version check
        // is part of the command, so a request changed by the winner answers 412, and one the winner decided 409.
        state
            .publishing
            .execute_retrying_prepared(
                PUBLISHING_ID,
                command,
                &attempt.metadata(crate::request_metadata(caller, request)),
                5,
                Some(&*hook),
            )
            .await
            .map_err(Problem::from)?;
        state.publisher.wake();
        if let Some(reply) = attempt.prepared() {
            return Ok(reply);
        }
        // No event was appended (nothing changed): the answer is the current state. The command's own result is in
        // the repository's cache; reading the store again could fail after the change was made.
        let (publishing, version) = match state.publishing.peek(PUBLISHING_ID) {
            Some(cached) => cached,
            None => state.publishing.load(PUBLISHING_ID).await.map_err(Problem::from)?,
        };
        render(&publishing, version)
    })
    .await
}

fn request_id_from_path(raw: &str) -> Result<RequestId, Problem> {
    RequestId::parse(raw).map_err(|_| not_found("such publish request"))
}

/// Reads one request from the read model, at least as new as the aggregate's state of it: when the projector has
/// not caught up yet (a client reading its own fresh write), it waits for it, up to two seconds.
async fn read_request(state: &AppState, request_id: &RequestId) -> Result<Option<PublishRequestRow>, Problem> {
    let (publishing, _) = state.publishing.load(PUBLISHING_ID).await.map_err(Problem::from)?;
    let Some(wanted) = publishing.request(request_id).map(|request| request.version) else {
        return Ok(None);
    };
    let wanted = i64::try_from(wanted).unwrap_or(i64::MAX);
    let deadline = std::time::Instant::now() + StdDuration::from_secs(2);
    loop {
        let row = state.publishing_reads.get(request_id.as_str()).await.map_err(store::StoreError::from)?;
        if row.as_ref().is_some_and(|row| row.version >= wanted) {
            return Ok(row);
        }
        if std::time::Instant::now() >= deadline {
            return Err(
                Problem::store_unavailable().detail("The request exists but its read model is behind; retry shortly.")
            );
        }
        actix_web::rt::time::sleep(StdDuration::from_millis(10)).await;
    }
}

/// Whether `caller` may see `row`: admins and auditors see every request, builders their own.
fn may_see(caller: &Caller, row: &PublishRequestRow) -> bool {
    matches!(caller.role, Role::Admin | Role::Auditor) || row.builder == caller.email.as_str()
}

// ---------------------------------------------------------------------------------------------------------------
// Publish requests

/// The blueprint of the caller's own running workspace `id`, from the control plane (ADR 0023). A workspace the
/// caller may not see is 404; an admin's request for another's is 403 (only its owner publishes it); one that is not
/// running is 409 `workspace_not_running`.
async fn own_running_workspace(
    state: &AppState,
    caller: &Caller,
    id: &WorkspaceId,
) -> Result<domain::workspace::Workspace, Problem> {
    let workspace =
        crate::workspaces::find(state, caller, id.as_str()).await.map_err(|problem| problem.field("workspace_id"))?;
    if workspace.owner != caller.email {
        return Err(Problem::new(ProblemCode::NotWorkspaceOwner, "Forbidden")
            .field("workspace_id")
            .detail("Only the workspace's owner may publish it."));
    }
    let status = workspace.status(crate::workspaces::connected(state, &workspace));
    if status != domain::workspace::Status::Running {
        return Err(Problem::new(ProblemCode::WorkspaceNotRunning, "Not running")
            .field("workspace_id")
            .detail(format!("The workspace is {}: publishing needs it running.", status.as_str())));
    }
    Ok(workspace)
}

/// Runs a git task in the workspace through its agent (which must be connected: the workspace is running).
async fn run_git(state: &AppState, workspace: &WorkspaceId, task: &GitTask) -> Result<TaskOutcome, Problem> {
    let agent = state.gateway.hub.get(workspace.as_str()).ok_or_else(|| {
        Problem::new(ProblemCode::WorkspaceNotRunning, "Not running")
            .field("workspace_id")
            .detail("The workspace's agent is not connected: publishing needs it running.")
    })?;
    match agent.run_task(task).await {
        Ok(TaskOutcome::Failed { kind, message }) => Err(git_problem(kind, &message)),
        Ok(outcome) => Ok(outcome),
        Err(TaskError::Unsupported) => Err(Problem::new(ProblemCode::AgentOutdated, "Agent outdated")
            .detail("The workspace's agent is older than this gateway and runs no git tasks: restart the workspace.")),
        Err(error) => {
            tracing::warn!(%error, workspace = %workspace, task = task.name(), "a git task gave no outcome");
            Err(Problem::new(ProblemCode::WorkspaceUnavailable, "Workspace unavailable")
                .retry_after(5)
                .detail(format!("{error}; retry shortly.")))
        }
    }
}

/// The problem a failed git task is reported as.
fn git_problem(kind: FailureKind, message: &str) -> Problem {
    match kind {
        FailureKind::Timeout => Problem::new(ProblemCode::WorkspaceUnavailable, "Workspace unavailable")
            .retry_after(5)
            .detail(format!("{message}; retry shortly.")),
        FailureKind::BadTask | FailureKind::Git | FailureKind::Unreachable => {
            tracing::warn!(?kind, message, "a git task failed in a workspace");
            Problem::new(ProblemCode::GitState, "Git failed").detail(format!("git failed in the workspace: {message}"))
        }
        _ => Problem::new(ProblemCode::GitState, "Repository not ready").detail(message.to_string()),
    }
}

/// Where the workspace's next diff starts.
async fn diff_base(state: &AppState, workspace: &domain::workspace::Workspace) -> Result<DiffBase, Problem> {
    let (publishing, _) = state.publishing.load(PUBLISHING_ID).await.map_err(Problem::from)?;
    Ok(DiffBase {
        published: publishing.last_published(&workspace.id).map(ToString::to_string),
        source: workspace.source_commit.clone(),
        blueprint_branch: workspace.spec.branch().as_str().to_string(),
    })
}

/// What publishing the workspace now would change: files, line counts and the patch (capped at
/// `publish_max_patch_bytes`), against the last published commit or, on a first publish, where the workspace left
/// the blueprint's branch. Its owner only; changes nothing in the workspace.
#[utoipa::path(get, path = "/api/v1/workspaces/{id}/publish-diff", tag = "publishing", security(("bearer" = [])),
    responses((status = 200, body = DiffPreviewView), (status = 401, body = Problem), (status = 403, body = Problem),
              (status = 404, body = Problem), (status = 409, body = Problem), (status = 422, body = Problem),
              (status = 503, body = Problem)))]
#[get("/api/v1/workspaces/{id}/publish-diff")]
pub async fn diff_preview(
    caller: Caller,
    state: web::Data<AppState>,
    path: Path<String>,
) -> Result<web::Json<DiffPreviewView>, Problem> {
    caller.require(&[Role::Member, Role::Admin])?;
    let workspace_id = WorkspaceId::parse(&path)
        .map_err(|_| Problem::new(ProblemCode::NotFound, "Not found").detail("No such workspace."))?;
    let workspace = own_running_workspace(&state, &caller, &workspace_id).await?;
    let task = GitTask::Diff {
        base: diff_base(&state, &workspace).await?,
        max_patch_bytes: state.publish_policy.max_patch_bytes,
        timeout_secs: state.publish_policy.git_timeout_secs,
    };
    match run_git(&state, &workspace_id, &task).await? {
        TaskOutcome::Diff { diff } => Ok(web::Json(DiffPreviewView::new(&workspace_id, diff))),
        other => {
            tracing::warn!(?other, "a diff task answered something else");
            Err(Problem::internal())
        }
    }
}

/// Asks to publish a workspace (members and admins, for their own workspaces). A trusted builder's request is
/// approved at once. Send an `Idempotency-Key` so that a retried submission never creates two requests.
#[utoipa::path(post, path = "/api/v1/publish-requests", tag = "publishing", request_body = SubmitRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "Makes retries safe")),
    security(("bearer" = [])),
    responses((status = 201, body = PublishRequestView), (status = 400, body = Problem), (status = 401, body = Problem),
              (status = 403, body = Problem), (status = 404, body = Problem), (status = 409, body = Problem),
              (status = 422, body = Problem), (status = 503, body = Problem),
              (status = 413, body = Problem), (status = 415, body = Problem)))]
#[post("/api/v1/publish-requests")]
pub async fn submit(
    caller: Caller,
    state: web::Data<AppState>,
    request: HttpRequest,
    body: Json<SubmitRequest>,
) -> Result<HttpResponse, Problem> {
    caller.require(&[Role::Member, Role::Admin])?;
    let fingerprint = serde_json::to_string(&*body).map_err(|_| Problem::internal())?;
    let (state, caller, request, body) = (&state, &caller, &request, &body);
    crate::idempotency::run(state, caller, request, fingerprint, |attempt| async move {
        let policy = &state.publish_policy;
        let workspace_id = WorkspaceId::parse(&body.workspace_id).map_err(Problem::from)?;
        let subdomain = Subdomain::parse(&body.subdomain).map_err(Problem::from)?;
        let message = values::text("message", &body.message, MAX_MESSAGE_CHARS).map_err(Problem::from)?;
        let workspace = own_running_workspace(state, caller, &workspace_id).await?;
        let blueprint_key = workspace.blueprint_key.clone();
        // What the aggregate would refuse anyway is refused before anything is committed in the workspace.
        let (publishing, _) = state.publishing.load(PUBLISHING_ID).await.map_err(Problem::from)?;
        if let Some(pending) = publishing.in_flight(&workspace_id) {
            let refusal =
                PublishingError::RequestInFlight { workspace_id: workspace_id.clone(), request_id: pending.clone() };
            return Err(Problem::from(CommandError::Rejected(refusal)));
        }
        if !publishing.may_claim(&subdomain, &workspace_id) {
            return Err(Problem::from(CommandError::Rejected(PublishingError::SubdomainTaken(subdomain))));
        }
        let task = GitTask::Commit {
            base: diff_base(state, &workspace).await?,
            message: message.clone(),
            author_name: caller.email.as_str().split('@').next().unwrap_or_default().to_string(),
            author_email: caller.email.to_string(),
            max_patch_bytes: policy.max_patch_bytes,
            timeout_secs: policy.git_timeout_secs,
        };
        let (commit_id, report) = match run_git(state, &workspace_id, &task).await? {
            TaskOutcome::Committed { commit, diff, .. } => {
                (CommitId::parse(&commit).map_err(|_| Problem::internal())?, diff)
            }
            TaskOutcome::NoChanges { base_commit } => {
                return Err(Problem::new(ProblemCode::NoChanges, "Nothing to publish").field("workspace_id").detail(
                    format!("The workspace's files equal its base ({base_commit}): there is nothing to publish."),
                ))
            }
            other => {
                tracing::warn!(?other, "a commit task answered something else");
                return Err(Problem::internal());
            }
        };
        let base_commit = CommitId::parse(&report.base_commit).ok();
        let files = u32::try_from(report.files_changed).unwrap_or(u32::MAX);
        let diff =
            DiffSummary::new(files, report.insertions, report.deletions, Some(report.patch), policy.max_patch_bytes)
                .map_err(|error| {
                    tracing::warn!(%error, "the workspace's diff does not fit a publish request");
                    Problem::internal()
                })?
                .truncated(report.patch_truncated);
        let (trust, _) = state.trust.load(TRUST_RULES_ID).await.map_err(Problem::from)?;
        let trusted = trust
            .evaluate(&caller.email, &blueprint_key)
            .map(|(rule_id, rule)| TrustMatch { rule_id: rule_id.to_string(), reason: rule.reason(rule_id) });
        let request_id = RequestId::parse(&uuid::Uuid::new_v4().to_string()).map_err(|_| Problem::internal())?;
        let now = chrono::Utc::now();
        let command = PublishingCommand::Submit {
            request_id: request_id.clone(),
            workspace_id: workspace_id.clone(),
            blueprint_key: blueprint_key.clone(),
            subdomain: subdomain.clone(),
            commit_id: commit_id.clone(),
            diff: diff.clone(),
            message: message.clone(),
            builder: caller.email.clone(),
            now,
            ttl: policy.ttl,
            approvals_required: policy.approvals_required.max(1),
            trusted: trusted.clone(),
            base_commit: base_commit.clone(),
            deliver: true,
        };
        let stamp = |time: chrono::DateTime<chrono::Utc>| time.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        let approvals_required = i64::from(policy.approvals_required.max(1));
        let ttl = policy.ttl;
        let builder = caller.email.to_string();
        let render = move |_: &Publishing, version: u64| {
            let view = PublishRequestView {
                id: request_id.to_string(),
                workspace_id: workspace_id.to_string(),
                blueprint_key: blueprint_key.to_string(),
                subdomain: subdomain.to_string(),
                builder: builder.clone(),
                commit_id: commit_id.to_string(),
                diff: DiffView {
                    files: i64::from(diff.files),
                    insertions: i64::try_from(diff.insertions).unwrap_or(i64::MAX),
                    deletions: i64::try_from(diff.deletions).unwrap_or(i64::MAX),
                    patch: None,
                    patch_truncated: diff.patch_truncated,
                    base_commit: base_commit.as_ref().map(ToString::to_string),
                },
                message: message.clone(),
                status: if trusted.is_some() { RequestStatus::Approved } else { RequestStatus::Pending }
                    .as_str()
                    .into(),
                approvals_required,
                approvals: 0,
                submitted_at: stamp(now),
                expires_at: stamp(now + ttl),
                decided_at: trusted.as_ref().map(|_| stamp(now)),
                decided_by: trusted.as_ref().map(|_| projections::SYSTEM_REVIEWER.to_string()),
                decision_reason: trusted.as_ref().map(|rule| rule.reason.clone()),
                trust_rule_id: trusted.as_ref().map(|rule| rule.rule_id.clone()),
                version: i64::try_from(version).unwrap_or(i64::MAX),
                delivery: trusted.as_ref().map(|_| DeliveryView {
                    status: "queued".into(),
                    remote: None,
                    branch: None,
                    pull_request_url: None,
                    pull_request_number: None,
                    failure: None,
                    attempts: 0,
                }),
                history: None,
            };
            Ok(crate::idempotency::Reply {
                status: StatusCode::CREATED,
                body: serde_json::to_value(view).map_err(|_| Problem::internal())?,
                location: Some(format!("/api/v1/publish-requests/{request_id}")),
                etag: Some(format!("\"{version}\"")),
            })
        };
        let hook = attempt.before_append(render);
        state
            .publishing
            .execute_retrying_prepared(
                PUBLISHING_ID,
                command,
                &attempt.metadata(crate::request_metadata(caller, request)),
                10,
                Some(&*hook),
            )
            .await
            .map_err(Problem::from)?;
        state.publisher.wake();
        attempt.prepared().ok_or_else(Problem::internal)
    })
    .await
}

/// Lists publish requests, newest first: every request for admins and auditors (the publish history), the
/// caller's own for members.
#[utoipa::path(get, path = "/api/v1/publish-requests", tag = "publishing", params(RequestListQuery, crate::PageParams),
    security(("bearer" = [])),
    responses((status = 200, body = crate::Page<PublishRequestView>), (status = 400, body = Problem), (status = 401, body = Problem),
              (status = 403, body = Problem),
              (status = 422, body = Problem)))]
#[get("/api/v1/publish-requests")]
pub async fn list_requests(
    caller: Caller,
    state: web::Data<AppState>,
    query: List<RequestListQuery, RequestKey>,
) -> Result<web::Json<PublishRequestPage>, Problem> {
    let List { filters: query, page: paging } = query;
    let status = match query.status.as_deref() {
        None => None,
        Some(raw @ ("pending" | "approved" | "rejected" | "withdrawn" | "expired")) => Some(raw.to_string()),
        Some(_) => {
            return Err(Problem::invalid_field("status", "status is pending, approved, rejected, withdrawn or expired"))
        }
    };
    let builder = match query.builder.as_deref() {
        None => None,
        Some(raw) => Some(Email::parse(raw).map_err(|error| Problem::invalid_field("builder", error.to_string()))?),
    };
    let builder = match caller.role {
        Role::Admin | Role::Auditor => builder,
        Role::Member => match builder {
            Some(other) if other != caller.email => {
                return Err(caller.require(&[Role::Admin, Role::Auditor]).err().unwrap_or_else(Problem::internal));
            }
            _ => Some(caller.email.clone()),
        },
    };
    let filter = RequestFilter {
        status,
        blueprint_key: query.blueprint_key.clone(),
        builder: builder.map(String::from),
        workspace_id: query.workspace_id.clone(),
    };
    let fetch = paging.fetch();
    let after = paging.after.map(|key| key.0);
    let rows =
        state.publishing_reads.list(&filter, false, after.as_ref(), fetch).await.map_err(store::StoreError::from)?;
    Ok(web::Json(page(rows, paging.limit)))
}

/// The approvals queue: pending requests, oldest first (admins and auditors).
#[utoipa::path(get, path = "/api/v1/approvals", tag = "publishing", params(QueueQuery, crate::PageParams), security(("bearer" = [])),
    responses((status = 200, body = crate::Page<PublishRequestView>), (status = 400, body = Problem), (status = 401, body = Problem),
              (status = 403, body = Problem),
              (status = 422, body = Problem)))]
#[get("/api/v1/approvals")]
pub async fn approvals_queue(
    caller: Caller,
    state: web::Data<AppState>,
    query: List<QueueQuery, RequestKey>,
) -> Result<HttpResponse, Problem> {
    caller.require(&[Role::Admin, Role::Auditor])?;
    let List { filters: query, page: paging } = query;
    let (limit, fetch, after) = (paging.limit, paging.fetch(), paging.after.map(|key| key.0));
    let cursor = after.as_ref().map(|key| crate::encode_page_key(&key.at, &key.id));
    let key = (query.blueprint_key.clone(), cursor, limit);
    // The same page for every reader until the read model moves: served from memory (crate::cache).
    let body = match state.caches.queue.get(&key) {
        Some(body) => body,
        None => {
            let revision = state.caches.queue.revision();
            let filter = RequestFilter {
                status: Some("pending".into()),
                blueprint_key: query.blueprint_key.clone(),
                ..RequestFilter::default()
            };
            let rows = state
                .publishing_reads
                .list(&filter, true, after.as_ref(), fetch)
                .await
                .map_err(store::StoreError::from)?;
            let body = web::Bytes::from(serde_json::to_vec(&page(rows, limit)).map_err(|_| Problem::internal())?);
            state.caches.queue.insert(revision, key, body.clone());
            body
        }
    };
    Ok(HttpResponse::Ok().content_type("application/json").body(body))
}

/// One request with its patch and full review history (admins, auditors, and its builder).
#[utoipa::path(get, path = "/api/v1/publish-requests/{id}", tag = "publishing", security(("bearer" = [])),
    responses((status = 200, body = PublishRequestView, headers(("ETag" = String, description = "The request's version, for If-Match"))),
              (status = 401, body = Problem), (status = 404, body = Problem),
              (status = 403, body = Problem), (status = 422, body = Problem)))]
#[get("/api/v1/publish-requests/{id}")]
pub async fn get_request(
    caller: Caller,
    state: web::Data<AppState>,
    path: Path<String>,
) -> Result<HttpResponse, Problem> {
    let request_id = request_id_from_path(&path)?;
    let row = read_request(&state, &request_id).await?;
    // Someone else's request is "not found" to a member: its existence is not theirs to learn.
    let row = row.filter(|row| may_see(&caller, row)).ok_or_else(|| not_found("such publish request"))?;
    let history = state.publishing_reads.history(request_id.as_str()).await.map_err(store::StoreError::from)?;
    let etag = format!("\"{}\"", row.version);
    Ok(HttpResponse::Ok().insert_header(("ETag", etag)).json(PublishRequestView::from_row(row, Some(history))))
}

/// Approves a pending request (admins other than its builder). With `If-Match`, only if unchanged since.
#[utoipa::path(post, path = "/api/v1/publish-requests/{id}/approve", tag = "publishing", request_body = Option<ReviewInput>,
    security(("bearer" = [])),
    responses((status = 200, body = DecisionView), (status = 401, body = Problem), (status = 403, body = Problem),
              (status = 404, body = Problem), (status = 409, body = Problem), (status = 412, body = Problem),
              (status = 422, body = Problem),
              (status = 400, body = Problem), (status = 413, body = Problem), (status = 415, body = Problem)))]
#[post("/api/v1/publish-requests/{id}/approve")]
pub async fn approve(
    caller: Caller,
    state: web::Data<AppState>,
    request: HttpRequest,
    path: Path<String>,
    body: OptionalJson<ReviewInput>,
) -> Result<HttpResponse, Problem> {
    caller.require(&[Role::Admin])?;
    let request_id = request_id_from_path(&path)?;
    let reason = body.value.as_ref().and_then(|review| review.reason.as_deref());
    let reason = optional_text("reason", reason, MAX_REASON_CHARS)?;
    let command = PublishingCommand::Approve {
        request_id: request_id.clone(),
        reviewer: caller.email.clone(),
        reason,
        reason_required: state.publish_policy.require_reason,
        if_version: crate::if_match(&request)?,
    };
    decide(&state, &caller, &request, request_id, command, &body.raw).await
}

/// Rejects a pending request with optional feedback (admins). Final: the builder submits a new request.
#[utoipa::path(post, path = "/api/v1/publish-requests/{id}/reject", tag = "publishing", request_body = Option<ReviewInput>,
    security(("bearer" = [])),
    responses((status = 200, body = DecisionView), (status = 401, body = Problem), (status = 403, body = Problem),
              (status = 404, body = Problem), (status = 409, body = Problem), (status = 412, body = Problem),
              (status = 422, body = Problem),
              (status = 400, body = Problem), (status = 413, body = Problem), (status = 415, body = Problem)))]
#[post("/api/v1/publish-requests/{id}/reject")]
pub async fn reject(
    caller: Caller,
    state: web::Data<AppState>,
    request: HttpRequest,
    path: Path<String>,
    body: OptionalJson<ReviewInput>,
) -> Result<HttpResponse, Problem> {
    caller.require(&[Role::Admin])?;
    let request_id = request_id_from_path(&path)?;
    let feedback = body.value.as_ref().and_then(|review| review.reason.as_deref());
    let feedback = optional_text("reason", feedback, MAX_REASON_CHARS)?;
    let command = PublishingCommand::Reject {
        request_id: request_id.clone(),
        reviewer: caller.email.clone(),
        feedback,
        reason_required: state.publish_policy.require_reason,
        if_version: crate::if_match(&request)?,
    };
    decide(&state, &caller, &request, request_id, command, &body.raw).await
}

/// Tries a failed delivery again (admins), once its cause is fixed: the push, or the pull request if the push was
/// done. 409 `delivery_not_failed` when the delivery has not failed.
#[utoipa::path(post, path = "/api/v1/publish-requests/{id}/retry", tag = "publishing", security(("bearer" = [])),
    responses((status = 200, body = DecisionView), (status = 401, body = Problem), (status = 403, body = Problem),
              (status = 404, body = Problem), (status = 409, body = Problem), (status = 422, body = Problem),
              (status = 503, body = Problem)))]
#[post("/api/v1/publish-requests/{id}/retry")]
pub async fn retry_delivery(
    caller: Caller,
    state: web::Data<AppState>,
    request: HttpRequest,
    path: Path<String>,
) -> Result<HttpResponse, Problem> {
    caller.require(&[Role::Admin])?;
    let request_id = request_id_from_path(&path)?;
    let command = PublishingCommand::RetryDelivery { request_id: request_id.clone(), by: caller.email.clone() };
    decide(&state, &caller, &request, request_id, command, &[]).await
}

/// Withdraws a pending request (its builder only). Final.
#[utoipa::path(post, path = "/api/v1/publish-requests/{id}/withdraw", tag = "publishing", security(("bearer" = [])),
    responses((status = 200, body = DecisionView), (status = 401, body = Problem), (status = 403, body = Problem),
              (status = 404, body = Problem), (status = 409, body = Problem), (status = 412, body = Problem),
              (status = 422, body = Problem)))]
#[post("/api/v1/publish-requests/{id}/withdraw")]
pub async fn withdraw(
    caller: Caller,
    state: web::Data<AppState>,
    request: HttpRequest,
    path: Path<String>,
) -> Result<HttpResponse, Problem> {
    caller.require(&[Role::Member, Role::Admin])?;
    let request_id = request_id_from_path(&path)?;
    let command = PublishingCommand::Withdraw {
        request_id: request_id.clone(),
        by: caller.email.clone(),
        if_version: crate::if_match(&request)?,
    };
    decide(&state, &caller, &request, request_id, command, &[]).await
}

// ---------------------------------------------------------------------------------------------------------------
// Trust rules

/// Lists trust rules (admins and auditors).
#[utoipa::path(get, path = "/api/v1/trust-rules", tag = "trust", params(crate::PageParams), security(("bearer" = [])),
    responses((status = 200, body = crate::Page<TrustRuleView>), (status = 400, body = Problem), (status = 401, body = Problem),
              (status = 403, body = Problem),
              (status = 422, body = Problem)))]
#[get("/api/v1/trust-rules")]
pub async fn list_trust_rules(
    caller: Caller,
    state: web::Data<AppState>,
    query: List,
) -> Result<web::Json<TrustRulePage>, Problem> {
    caller.require(&[Role::Admin, Role::Auditor])?;
    let page = &query.page;
    let rows = state
        .publishing_reads
        .trust_rules(page.after.as_deref(), page.fetch())
        .await
        .map_err(store::StoreError::from)?;
    Ok(web::Json(TrustRulePage::from_rows(rows, page.limit, |row| row.rule_id.clone(), TrustRuleView::from)))
}

/// Trusts a user for one blueprint or all (admins). Their later submissions are approved at once.
#[utoipa::path(post, path = "/api/v1/trust-rules", tag = "trust", request_body = TrustRuleInput,
    params(("Idempotency-Key" = Option<String>, Header, description = "Makes retries safe")),
    security(("bearer" = [])),
    responses((status = 201, body = TrustRuleView), (status = 401, body = Problem), (status = 403, body = Problem),
              (status = 409, body = Problem), (status = 422, body = Problem),
              (status = 400, body = Problem), (status = 413, body = Problem), (status = 415, body = Problem)))]
#[post("/api/v1/trust-rules")]
pub async fn create_trust_rule(
    caller: Caller,
    state: web::Data<AppState>,
    request: HttpRequest,
    body: Json<TrustRuleInput>,
) -> Result<HttpResponse, Problem> {
    caller.require(&[Role::Admin])?;
    let fingerprint = serde_json::to_string(&*body).map_err(|_| Problem::internal())?;
    let (state, caller, request, body) = (&state, &caller, &request, &body);
    crate::idempotency::run(state, caller, request, fingerprint, |attempt| async move {
        let email = Email::parse(&body.email).map_err(|error| {
            Problem::new(ProblemCode::InvalidField, "Invalid field").field("email").detail(error.to_string())
        })?;
        let blueprint_key =
            body.blueprint_key.as_deref().map(BlueprintKey::parse).transpose().map_err(Problem::from)?;
        let description = optional_text("description", body.description.as_deref(), MAX_REASON_CHARS)?;
        let rule_id = uuid::Uuid::new_v4().to_string();
        let command = TrustCommand::Grant {
            rule_id: rule_id.clone(),
            email: email.clone(),
            blueprint_key: blueprint_key.clone(),
            description: description.clone(),
            granted_by: caller.email.clone(),
        };
        let granted_by = caller.email.to_string();
        let render = move |_: &TrustRules, _: u64| {
            let view = TrustRuleView {
                id: rule_id.clone(),
                email: email.to_string(),
                blueprint_key: blueprint_key.clone().map(String::from),
                description: description.clone(),
                granted_by: granted_by.clone(),
                granted_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            };
            Ok(crate::idempotency::Reply {
                status: StatusCode::CREATED,
                body: serde_json::to_value(view).map_err(|_| Problem::internal())?,
                location: Some(format!("/api/v1/trust-rules/{rule_id}")),
                etag: None,
            })
        };
        let hook = attempt.before_append(render);
        state
            .trust
            .execute_retrying_prepared(
                TRUST_RULES_ID,
                command,
                &attempt.metadata(crate::request_metadata(caller, request)),
                5,
                Some(&*hook),
            )
            .await
            .map_err(Problem::from)?;
        attempt.prepared().ok_or_else(Problem::internal)
    })
    .await
}

/// Would `email`'s publish on `blueprint_key` be approved at once, and by which rule? Answers from the same
/// state a submission is decided on. Admins and auditors may ask about anyone, members about themselves.
#[utoipa::path(get, path = "/api/v1/trust-rules/evaluate", tag = "trust", params(EvaluateQuery),
    security(("bearer" = [])),
    responses((status = 200, body = EvaluateView), (status = 400, body = Problem), (status = 401, body = Problem),
              (status = 403, body = Problem),
              (status = 422, body = Problem)))]
#[get("/api/v1/trust-rules/evaluate")]
pub async fn evaluate_trust(
    caller: Caller,
    state: web::Data<AppState>,
    query: Query<EvaluateQuery>,
) -> Result<web::Json<EvaluateView>, Problem> {
    let email = Email::parse(&query.email).map_err(|error| Problem::invalid_field("email", error.to_string()))?;
    if email != caller.email {
        caller.require(&[Role::Admin, Role::Auditor])?;
    }
    let blueprint_key = BlueprintKey::parse(&query.blueprint_key)
        .map_err(|error| Problem::invalid_field("blueprint_key", &error.reason))?;
    let (trust, _) = state.trust.load(TRUST_RULES_ID).await.map_err(Problem::from)?;
    let matched = trust.evaluate(&email, &blueprint_key).map(|(rule_id, rule)| (rule_id.to_string(), rule.clone()));
    let reason = matched.as_ref().map(|(rule_id, rule)| rule.reason(rule_id));
    let rule = match &matched {
        Some((rule_id, _)) => state.publishing_reads.trust_rule(rule_id).await.map_err(store::StoreError::from)?,
        None => None,
    };
    // The read model may lag the aggregate by a moment; the aggregate's facts fill in.
    let rule = rule.map(TrustRuleView::from).or_else(|| {
        matched.map(|(rule_id, rule)| TrustRuleView {
            id: rule_id,
            email: rule.email.to_string(),
            blueprint_key: rule.blueprint_key.map(String::from),
            description: rule.description,
            granted_by: String::new(),
            granted_at: String::new(),
        })
    });
    Ok(web::Json(EvaluateView {
        email: email.to_string(),
        blueprint_key: blueprint_key.to_string(),
        auto_approved: rule.is_some(),
        rule,
        reason,
    }))
}

/// One trust rule (admins and auditors).
#[utoipa::path(get, path = "/api/v1/trust-rules/{id}", tag = "trust", security(("bearer" = [])),
    responses((status = 200, body = TrustRuleView), (status = 401, body = Problem), (status = 403, body = Problem),
              (status = 404, body = Problem),
              (status = 422, body = Problem), (status = 503, body = Problem)))]
#[get("/api/v1/trust-rules/{id}")]
pub async fn get_trust_rule(
    caller: Caller,
    state: web::Data<AppState>,
    path: Path<String>,
) -> Result<web::Json<TrustRuleView>, Problem> {
    caller.require(&[Role::Admin, Role::Auditor])?;
    let read = || async {
        state.publishing_reads.trust_rule(&path).await.map_err(|e| Problem::from(store::StoreError::from(e)))
    };
    if let Some(row) = read().await? {
        return Ok(web::Json(TrustRuleView::from(row)));
    }
    // Not in the read model: a rule granted a moment ago may not have reached it yet. The aggregate decides whether
    // it exists; if it does, the read model is awaited, so that an admin always reads their own grant.
    let (trust, _) = state.trust.load(TRUST_RULES_ID).await.map_err(Problem::from)?;
    if trust.rule(&path).is_none() {
        return Err(not_found("such trust rule"));
    }
    crate::read_own_write("trust rule", read, |_| true).await.map(|row| web::Json(TrustRuleView::from(row)))
}

/// Revokes a trust rule (admins).
#[utoipa::path(delete, path = "/api/v1/trust-rules/{id}", tag = "trust", security(("bearer" = [])),
    responses((status = 204), (status = 401, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem),
              (status = 422, body = Problem)))]
#[delete("/api/v1/trust-rules/{id}")]
pub async fn revoke_trust_rule(
    caller: Caller,
    state: web::Data<AppState>,
    request: HttpRequest,
    path: Path<String>,
) -> Result<HttpResponse, Problem> {
    caller.require(&[Role::Admin])?;
    let command = TrustCommand::Revoke { rule_id: path.into_inner(), revoked_by: caller.email.clone() };
    state
        .trust
        .execute_retrying(TRUST_RULES_ID, command, &crate::request_metadata(&caller, &request), 5)
        .await
        .map_err(Problem::from)?;
    Ok(HttpResponse::NoContent().finish())
}
