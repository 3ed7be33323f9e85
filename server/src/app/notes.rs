//! `/api/notes`: a user's notes, newest first, paginated by an id cursor.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use futures_util::TryStreamExt as _;
use serde::{Deserialize, Serialize};
use sqlx::Either;
use sqlx::Row as _;
use sqlx::postgres::{PgRow, Postgres};

use super::AppConfig;
use super::auth::{AuthUser, BearerToken};
use super::timestamp::Timestamp;
use tenant_router::middleware::CurrentTenant;
use tenant_router::problem::{ApiError, ApiJson, ApiPath, ApiQuery};

const MAX_CONTENT_CHARS: usize = 10_000;

#[derive(Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub(super) struct Note {
    id: i64,
    content: String,
    #[schema(value_type = String, format = DateTime)]
    created_at: Timestamp,
    #[schema(value_type = String, format = DateTime)]
    updated_at: Timestamp,
}

/// A page of notes written as JSON while its rows arrive: each note's content is escaped
/// straight from the row's buffer, with no `String`, no `Note` and no serde walk in between.
/// The bytes are those serde writes for [`NotePage`] (a test holds the two equal).
struct PageWriter {
    body: Vec<u8>,
    limit: usize,
    written: usize,
    last_id: i64,
    more: bool,
}

impl PageWriter {
    fn new(limit: usize) -> Self {
        // Room for a page of short notes; a long one grows it once.
        let mut body = Vec::with_capacity(64 + limit * 192);
        body.extend_from_slice(b"{\"notes\":[");
        Self {
            body,
            limit,
            written: 0,
            last_id: 0,
            more: false,
        }
    }

    /// Adds a note, or past `limit` notes only records that there are more.
    fn push(&mut self, id: i64, content: &str, created_at: Timestamp, updated_at: Timestamp) {
        if self.written == self.limit {
            self.more = true;
            return;
        }
        if self.written > 0 {
            self.body.push(b',');
        }
        self.body.extend_from_slice(b"{\"id\":");
        self.json(&id);
        self.body.extend_from_slice(b",\"content\":");
        self.json(content);
        self.body.extend_from_slice(b",\"created_at\":");
        let created = self.body.len();
        created_at.write_json(&mut self.body);
        let created = created..self.body.len();
        self.body.extend_from_slice(b",\"updated_at\":");
        if updated_at == created_at {
            // A note never edited: the same text again.
            self.body.extend_from_within(created);
        } else {
            updated_at.write_json(&mut self.body);
        }
        self.body.push(b'}');
        self.written += 1;
        self.last_id = id;
    }

    fn json<T: Serialize + ?Sized>(&mut self, value: &T) {
        // Into a Vec, a string or a timestamp: nothing here can fail.
        serde_json::to_writer(&mut self.body, value).expect("JSON into a Vec");
    }

    /// The page, with `next_cursor` (the last note's id) when there were more notes.
    fn finish(mut self) -> Vec<u8> {
        self.body.extend_from_slice(b"],\"next_cursor\":");
        if self.more {
            // A string: a client may keep it as one, whatever its number type.
            self.body.push(b'"');
            let last_id = self.last_id;
            self.json(&last_id);
            self.body.push(b'"');
        } else {
            self.body.extend_from_slice(b"null");
        }
        self.body.push(b'}');
        self.body
    }
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct ListQuery {
    limit: Option<i64>,
    cursor: Option<String>,
}

/// The page's schema, and what [`PageWriter`] writes by hand.
#[derive(Serialize, utoipa::ToSchema)]
#[cfg_attr(not(test), allow(dead_code))]
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

#[utoipa::path(get, path = "/api/notes", tag = "notes", params(ListQuery), security(("bearer" = [])),
    responses((status = 200, description = "The user's notes, newest first", body = NotePage), (status = 401, description = "No valid bearer token", body = tenant_router::problem::Problem, content_type = "application/problem+json"), (status = 422, description = "Invalid fields, each named", body = tenant_router::problem::Problem, content_type = "application/problem+json"), crate::openapi::TenantProblems))]
/// The hottest route, so it checks the token and reads the page in one round trip: no row
/// means no valid session (401); a row with no note means an empty page.
#[tracing::instrument(level = "debug", skip_all, fields(tenant.id = %tenant.id()))]
pub(super) async fn list(
    tenant: CurrentTenant,
    token: BearerToken,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Response, ApiError> {
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
    let query = sqlx::query(PAGE_SQL)
        .bind(db.scope())
        .bind(token.hash())
        .bind(before)
        .bind(limit + 1);
    // The statement's rows and its result, as they come: what `fetch` gives, without its
    // second stream and a future per row to filter the result out.
    let mut rows = sqlx::Executor::fetch_many(&mut conn, query);
    // Each row is the session's user and one of its notes, or no note (an empty page):
    // decoded by position, written as it arrives.
    let mut session = false;
    let mut checked = false;
    let mut page = PageWriter::new(limit as usize);
    while let Some(step) = rows.try_next().await? {
        let Either::Right(row) = step else { continue };
        session = true;
        if let Some((id, content, created_at, updated_at)) = row_note(&row, !checked)? {
            checked = true;
            page.push(id, content, created_at, updated_at);
        }
    }
    drop(rows);
    drop(conn);
    if !session {
        return Err(ApiError::Unauthorized);
    }
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        page.finish(),
    )
        .into_response())
}

/// A row of the page query's note: id, content, created and updated; `None` for the row of a
/// session with no notes. With `check`, each column's type is also checked against its Rust
/// type: every row of a statement has the statement's columns, so once is enough.
fn row_note(
    row: &PgRow,
    check: bool,
) -> Result<Option<(i64, &str, Timestamp, Timestamp)>, sqlx::Error> {
    fn get<'r, T>(row: &'r PgRow, index: usize, check: bool) -> Result<T, sqlx::Error>
    where
        T: sqlx::Decode<'r, Postgres> + sqlx::Type<Postgres>,
    {
        if check {
            row.try_get(index)
        } else {
            row.try_get_unchecked(index)
        }
    }
    let Some(id) = get::<Option<i64>>(row, 0, check)? else {
        return Ok(None);
    };
    Ok(Some((
        id,
        get(row, 1, check)?,
        get(row, 2, check)?,
        get(row, 3, check)?,
    )))
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
    State(config): State<std::sync::Arc<AppConfig>>,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn note(id: i64, content: &str, micros: i64) -> Note {
        Note {
            id,
            content: content.to_string(),
            created_at: Timestamp::from_unix_micros(micros),
            updated_at: Timestamp::from_unix_micros(micros + 1_500),
        }
    }

    /// What the handler writes for `rows` (as the query returns them, `limit` + 1 at most)
    /// against what serde writes for the page they make.
    fn assert_as_serde(rows: &[Note], limit: usize) {
        let mut page = PageWriter::new(limit);
        for n in rows {
            page.push(n.id, &n.content, n.created_at, n.updated_at);
        }
        let written = page.finish();
        let shown = rows.len().min(limit);
        let expected = NotePage {
            notes: rows[..shown].to_vec(),
            next_cursor: (rows.len() > limit).then(|| rows[shown - 1].id.to_string()),
        };
        assert_eq!(
            String::from_utf8(written).unwrap(),
            serde_json::to_string(&expected).unwrap()
        );
    }

    #[test]
    fn an_empty_page_is_written_as_serde_writes_it() {
        assert_as_serde(&[], 20);
    }

    /// Quotes, backslashes, control characters, markup, and text beyond ASCII: escaped
    /// exactly as serde escapes them, so a note can never break out of its string.
    #[test]
    fn notes_that_need_escaping_are_written_as_serde_writes_them() {
        let rows = [
            note(9, "plain", 0),
            note(8, "\"quoted\" and \\ back", 1_700_000_000_123_456),
            note(7, "\u{1}\u{1f}\n\t\r\u{7f}", -1),
            note(6, "</script><script>alert(1)</script>", 946_684_800_000_000),
            note(
                5,
                "caf\u{e9} \u{1f600} \u{2028}\u{2029}",
                253_402_300_799_999_999,
            ),
            note(i64::MAX, "largest id", 1),
        ];
        assert_as_serde(&rows, 20);
    }

    /// One row past the limit: that note is left out and the cursor is the last one shown;
    /// exactly the limit: no cursor.
    #[test]
    fn the_row_past_the_limit_only_sets_the_cursor() {
        let rows: Vec<Note> = (1..=4).rev().map(|id| note(id, "n", id * 1_000)).collect();
        assert_as_serde(&rows, 3);
        assert_as_serde(&rows[..3], 3);
        assert_as_serde(&rows[..1], 1);
        assert_as_serde(&rows[..2], 1);
    }

    /// Timestamps outside four-digit years take serde's fallback path: still the same text.
    #[test]
    fn timestamps_outside_rfc3339_years_are_written_as_serde_writes_them() {
        let rows = [
            note(2, "far", i64::MAX - 10_000),
            note(1, "past", -70_000_000_000_000_000),
        ];
        assert_as_serde(&rows, 5);
    }

    /// A note never edited (updated when created) has its creation's text written again:
    /// still each note's own, in every form a timestamp takes.
    #[test]
    fn unedited_notes_are_written_as_serde_writes_them() {
        let unedited = |id, micros| Note {
            updated_at: Timestamp::from_unix_micros(micros),
            ..note(id, "same", micros)
        };
        let rows = [
            unedited(6, 1_700_000_000_123_456),
            note(5, "edited", 1_700_000_000_123_456),
            unedited(4, 1_700_000_000_000_000),
            unedited(3, i64::MAX - 10_000),
            unedited(2, -70_000_000_000_000_000),
            unedited(1, 0),
        ];
        assert_as_serde(&rows, 10);
    }
}
