//! `/api/notes`: a user's notes, newest first, paginated by an id cursor.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use futures_util::TryStreamExt as _;
use serde::{Deserialize, Serialize};

use super::AppConfig;
use super::auth::{AuthUser, BearerToken};
use super::timestamp::Timestamp;
use tenant_router::middleware::CurrentTenant;
use tenant_router::problem::{ApiError, ApiJson, ApiPath, ApiQuery};

const MAX_CONTENT_CHARS: usize = 10_000;

#[derive(Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub(super) struct Note {
    id: i64,
    content: String,
    #[schema(value_type = String, format = DateTime)]
    created_at: Timestamp,
    #[schema(value_type = String, format = DateTime)]
    updated_at: Timestamp,
}

/// A page as JSON, serialized into a buffer sized for it: axum's `Json` starts at 128 bytes
/// and grows by copying.
pub(super) struct PageJson(NotePage);

impl IntoResponse for PageJson {
    fn into_response(self) -> Response {
        let size = 64
            + self
                .0
                .notes
                .iter()
                .map(|n| 128 + n.content.len())
                .sum::<usize>();
        let mut body = Vec::with_capacity(size);
        match serde_json::to_writer(&mut body, &self.0) {
            Ok(()) => (
                [(axum::http::header::CONTENT_TYPE, "application/json")],
                body,
            )
                .into_response(),
            Err(e) => ApiError::Internal(e.into()).into_response(),
        }
    }
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct ListQuery {
    limit: Option<i64>,
    cursor: Option<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct NotePage {
    notes: Vec<Note>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    next_cursor: Option<String>,
}

#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(default)]
pub(super) struct NoteBody {
    content: String,
}

impl NoteBody {
    fn validate(&self) -> Result<(), ApiError> {
        let n = self.content.chars().count();
        if n == 0 || n > MAX_CONTENT_CHARS || self.content.trim().is_empty() {
            return Err(ApiError::invalid(
                "content",
                format!("must be 1 to {MAX_CONTENT_CHARS} characters, not only spaces"),
            ));
        }
        if self.content.contains('\0') {
            return Err(ApiError::invalid("content", "must not contain NUL"));
        }
        Ok(())
    }
}

fn not_found() -> ApiError {
    ApiError::NotFound("no such note".into())
}

/// `GET /api/notes` in one round trip: binds the scope ($1), the token's hash ($2), the id
/// to start below ($3) and how many notes to read ($4). Public for the benchmark's plain
/// sqlx server, which runs the same query.
pub const PAGE_SQL: &str = "SELECT n.id, n.content, n.created_at, n.updated_at
         FROM sessions s
         LEFT JOIN LATERAL (
             SELECT id, content, created_at, updated_at FROM notes
             WHERE tenant_id = $1 AND user_id = s.user_id AND id < $3
             ORDER BY id DESC LIMIT $4
         ) n ON true
         WHERE s.tenant_id = $1 AND s.token_hash = $2 AND s.expires_at > now()
         ORDER BY n.id DESC";

/// One row of the list query: the session's user, and one of its notes (or none): id,
/// content, created and updated. A tuple, decoded by position, not by column name.
type SessionNote = (
    Option<i64>,
    Option<String>,
    Option<Timestamp>,
    Option<Timestamp>,
);

#[utoipa::path(get, path = "/api/notes", tag = "notes", params(ListQuery), security(("bearer" = [])),
    responses((status = 200, description = "The user's notes, newest first", body = NotePage), (status = 401, description = "No valid bearer token", body = tenant_router::problem::Problem, content_type = "application/problem+json"), (status = 422, description = "Invalid fields, each named", body = tenant_router::problem::Problem, content_type = "application/problem+json"), crate::openapi::TenantProblems))]
/// The hottest route, so it checks the token and reads the page in one round trip: no row
/// means no valid session (401); a row with no note means an empty page.
#[tracing::instrument(level = "debug", skip_all, fields(tenant.id = %tenant.id()))]
pub(super) async fn list(
    tenant: CurrentTenant,
    token: BearerToken,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<PageJson, ApiError> {
    let limit = q.limit.unwrap_or(20);
    if !(1..=100).contains(&limit) {
        return Err(ApiError::invalid("limit", "must be between 1 and 100"));
    }
    let before = match q.cursor.as_deref() {
        None | Some("") => i64::MAX,
        Some(c) => c
            .parse::<i64>()
            .ok()
            .filter(|c| *c > 0)
            .ok_or_else(|| ApiError::invalid("cursor", "is not a cursor this API returned"))?,
    };
    let db = tenant.db();
    let mut conn = db.read().await?;
    let mut rows = sqlx::query_as::<_, SessionNote>(PAGE_SQL)
        .bind(db.scope())
        .bind(token.hash())
        .bind(before)
        .bind(limit + 1)
        .fetch(&mut conn);
    // Straight into the page, sized for it: no list of rows in between.
    let mut session = false;
    let mut notes = Vec::with_capacity(limit as usize + 1);
    while let Some((id, content, created_at, updated_at)) = rows.try_next().await? {
        session = true;
        if let (Some(id), Some(content), Some(created_at), Some(updated_at)) =
            (id, content, created_at, updated_at)
        {
            notes.push(Note {
                id,
                content,
                created_at,
                updated_at,
            });
        }
    }
    drop(rows);
    drop(conn);
    if !session {
        return Err(ApiError::Unauthorized);
    }
    let next_cursor = if notes.len() as i64 > limit {
        notes.truncate(limit as usize);
        notes.last().map(|n| n.id.to_string())
    } else {
        None
    };
    Ok(PageJson(NotePage { notes, next_cursor }))
}

#[derive(Deserialize, Default, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateQuery {
    /// `?async=true`: create the note through a background job and answer 202.
    #[serde(default, rename = "async")]
    run_async: bool,
}

#[utoipa::path(post, path = "/api/notes", tag = "notes", params(CreateQuery), request_body = NoteBody, security(("bearer" = [])),
    responses((status = 201, description = "Created", body = Note), (status = 202, description = "With ?async=true: queued as a job", body = crate::app::jobs::Submitted), (status = 401, description = "No valid bearer token", body = tenant_router::problem::Problem, content_type = "application/problem+json"), (status = 422, description = "Invalid fields, each named", body = tenant_router::problem::Problem, content_type = "application/problem+json"), crate::openapi::TenantProblems))]
#[tracing::instrument(level = "debug", skip_all, fields(tenant.id = %tenant.id(), user.id = user.user_id))]
pub(super) async fn create(
    State(config): State<AppConfig>,
    tenant: CurrentTenant,
    user: AuthUser,
    ApiQuery(q): ApiQuery<CreateQuery>,
    ApiJson(body): ApiJson<NoteBody>,
) -> Result<Response, ApiError> {
    body.validate()?;
    if q.run_async {
        let queue = super::jobs::queue(&config)?;
        let payload = serde_json::json!({ "content": body.content });
        return super::jobs::submit_as(queue, &tenant, user, "notes.create", payload, None).await;
    }
    let db = tenant.db();
    let mut conn = db.conn().await?;
    let note: Note = sqlx::query_as(
        "INSERT INTO notes (tenant_id, user_id, content) VALUES ($1, $2, $3)
         RETURNING id, content, created_at, updated_at",
    )
    .bind(db.scope())
    .bind(user.user_id)
    .bind(&body.content)
    .fetch_one(&mut conn)
    .await?;
    conn.commit().await?;
    Ok((StatusCode::CREATED, Json(note)).into_response())
}

#[utoipa::path(get, path = "/api/notes/{id}", tag = "notes", params(("id" = i64, Path, description = "The note's id")), security(("bearer" = [])),
    responses((status = 200, description = "The note", body = Note), (status = 401, description = "No valid bearer token", body = tenant_router::problem::Problem, content_type = "application/problem+json"), (status = 404, description = "No such note of this user (or no tenant with this host)", body = tenant_router::problem::Problem, content_type = "application/problem+json"), crate::openapi::TenantProblems))]
#[tracing::instrument(level = "debug", skip_all, fields(tenant.id = %tenant.id(), user.id = user.user_id))]
pub(super) async fn show(
    tenant: CurrentTenant,
    user: AuthUser,
    ApiPath(id): ApiPath<i64>,
) -> Result<Json<Note>, ApiError> {
    let db = tenant.db();
    let mut conn = db.read().await?;
    sqlx::query_as(
        "SELECT id, content, created_at, updated_at FROM notes
         WHERE tenant_id = $1 AND id = $2 AND user_id = $3",
    )
    .bind(db.scope())
    .bind(id)
    .bind(user.user_id)
    .fetch_optional(&mut conn)
    .await?
    .map(Json)
    .ok_or_else(not_found)
}

#[utoipa::path(put, path = "/api/notes/{id}", tag = "notes", params(("id" = i64, Path, description = "The note's id")), request_body = NoteBody, security(("bearer" = [])),
    responses((status = 200, description = "The note, changed", body = Note), (status = 401, description = "No valid bearer token", body = tenant_router::problem::Problem, content_type = "application/problem+json"), (status = 404, description = "No such note of this user (or no tenant with this host)", body = tenant_router::problem::Problem, content_type = "application/problem+json"), (status = 422, description = "Invalid fields, each named", body = tenant_router::problem::Problem, content_type = "application/problem+json"), crate::openapi::TenantProblems))]
#[tracing::instrument(level = "debug", skip_all, fields(tenant.id = %tenant.id(), user.id = user.user_id))]
pub(super) async fn update(
    tenant: CurrentTenant,
    user: AuthUser,
    ApiPath(id): ApiPath<i64>,
    ApiJson(body): ApiJson<NoteBody>,
) -> Result<Json<Note>, ApiError> {
    body.validate()?;
    let db = tenant.db();
    let mut conn = db.conn().await?;
    let note: Option<Note> = sqlx::query_as(
        "UPDATE notes SET content = $4, updated_at = now()
         WHERE tenant_id = $1 AND id = $2 AND user_id = $3
         RETURNING id, content, created_at, updated_at",
    )
    .bind(db.scope())
    .bind(id)
    .bind(user.user_id)
    .bind(&body.content)
    .fetch_optional(&mut conn)
    .await?;
    conn.commit().await?;
    note.map(Json).ok_or_else(not_found)
}

#[utoipa::path(delete, path = "/api/notes/{id}", tag = "notes", params(("id" = i64, Path, description = "The note's id")), security(("bearer" = [])),
    responses((status = 204, description = "Deleted"), (status = 401, description = "No valid bearer token", body = tenant_router::problem::Problem, content_type = "application/problem+json"), (status = 404, description = "No such note of this user (or no tenant with this host)", body = tenant_router::problem::Problem, content_type = "application/problem+json"), crate::openapi::TenantProblems))]
#[tracing::instrument(level = "debug", skip_all, fields(tenant.id = %tenant.id(), user.id = user.user_id))]
pub(super) async fn remove(
    tenant: CurrentTenant,
    user: AuthUser,
    ApiPath(id): ApiPath<i64>,
) -> Result<StatusCode, ApiError> {
    let db = tenant.db();
    let mut conn = db.conn().await?;
    let deleted =
        sqlx::query("DELETE FROM notes WHERE tenant_id = $1 AND id = $2 AND user_id = $3")
            .bind(db.scope())
            .bind(id)
            .bind(user.user_id)
            .execute(&mut conn)
            .await?
            .rows_affected();
    conn.commit().await?;
    if deleted == 0 {
        Err(not_found())
    } else {
        Ok(StatusCode::NO_CONTENT)
    }
}
