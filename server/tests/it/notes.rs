//! The reference app: registration, login and notes.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::harness::{TestApp, both, problem};

const T1: &str = "tenant-1.test.com";

both!(registration_rules);
async fn registration_rules(app: TestApp) {
    assert_eq!(
        app.register(T1, "ada", "Ada@Example.com").await.status(),
        StatusCode::CREATED
    );
    // Duplicates within the tenant, whatever the case.
    let body = problem(
        app.register(T1, "ADA", "other@example.com").await,
        StatusCode::CONFLICT,
    )
    .await;
    assert!(body["detail"].as_str().unwrap().contains("username"));
    let body = problem(
        app.register(T1, "ada2", "ada@example.COM").await,
        StatusCode::CONFLICT,
    )
    .await;
    assert!(body["detail"].as_str().unwrap().contains("email"));

    // Every invalid field is named, missing ones included.
    let r = app
        .post(
            T1,
            "/api/register",
            json!({"username": "x", "password": "short"}),
            None,
        )
        .await;
    let body = problem(r, StatusCode::UNPROCESSABLE_ENTITY).await;
    let fields: Vec<&str> = body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["username", "email", "password"]);
}

both!(login_does_not_reveal_which_part_was_wrong);
async fn login_does_not_reveal_which_part_was_wrong(app: TestApp) {
    app.user_token(T1, "kay").await;
    let wrong_password = problem(
        app.login(T1, "kay@example.com", "wrong password").await,
        StatusCode::UNAUTHORIZED,
    )
    .await;
    let unknown_email = problem(
        app.login(T1, "nobody@example.com", "correct horse").await,
        StatusCode::UNAUTHORIZED,
    )
    .await;
    assert_eq!(wrong_password, unknown_email);
    // An email no database text can hold (NUL): the same 401, not a 500 (found by the
    // API fuzzer).
    let unstorable = problem(
        app.login(T1, "kay\u{0}@example.com", "correct horse").await,
        StatusCode::UNAUTHORIZED,
    )
    .await;
    assert_eq!(unstorable, unknown_email);
    problem(
        app.get(T1, "/api/notes", None).await,
        StatusCode::UNAUTHORIZED,
    )
    .await;
    problem(
        app.get(T1, "/api/notes", Some("forged")).await,
        StatusCode::UNAUTHORIZED,
    )
    .await;
}

both!(expired_tokens_are_refused);
async fn expired_tokens_are_refused(app: TestApp) {
    let token = app.user_token(T1, "old").await;
    assert_eq!(
        app.get(T1, "/api/notes", Some(&token)).await.status(),
        StatusCode::OK
    );
    let tenant = app.registry.resolve(T1).unwrap();
    sqlx::query("UPDATE sessions SET expires_at = now() - interval '1 second'")
        .execute(&mut *tenant.pool().acquire().await.unwrap())
        .await
        .unwrap();
    problem(
        app.get(T1, "/api/notes", Some(&token)).await,
        StatusCode::UNAUTHORIZED,
    )
    .await;
}

both!(notes_crud_pagination_and_ownership);
async fn notes_crud_pagination_and_ownership(app: TestApp) {
    let alice = app.user_token(T1, "alice").await;
    let bob = app.user_token(T1, "bob").await;
    let mut ids = Vec::new();
    for i in 0..25 {
        ids.push(
            app.create_note(T1, &alice, &format!("note {i}")).await["id"]
                .as_i64()
                .unwrap(),
        );
    }

    // Newest first, 20 by default, then the rest through the cursor.
    let page: Value = app
        .get(T1, "/api/notes", Some(&alice))
        .await
        .json()
        .await
        .unwrap();
    let notes = page["notes"].as_array().unwrap();
    assert_eq!(notes.len(), 20);
    assert_eq!(notes[0]["content"], "note 24");
    let cursor = page["next_cursor"].as_str().unwrap();
    let page: Value = app
        .get(
            T1,
            &format!("/api/notes?cursor={cursor}&limit=10"),
            Some(&alice),
        )
        .await
        .json()
        .await
        .unwrap();
    let rest: Vec<&str> = page["notes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["content"].as_str().unwrap())
        .collect();
    assert_eq!(rest, ["note 4", "note 3", "note 2", "note 1", "note 0"]);
    assert!(page["next_cursor"].is_null());
    problem(
        app.get(T1, "/api/notes?limit=0", Some(&alice)).await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    problem(
        app.get(T1, "/api/notes?cursor=zz", Some(&alice)).await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;

    let id = ids[0];
    let path = format!("/api/notes/{id}");
    let r = app.get(T1, &path, Some(&alice)).await;
    assert_eq!(r.json::<Value>().await.unwrap()["content"], "note 0");
    // Another user's note is simply not there.
    problem(app.get(T1, &path, Some(&bob)).await, StatusCode::NOT_FOUND).await;
    let r = app
        .request(reqwest::Method::PUT, T1, &path)
        .bearer_auth(&bob)
        .json(&json!({"content": "hijack"}))
        .send()
        .await
        .unwrap();
    problem(r, StatusCode::NOT_FOUND).await;
    let r = app
        .request(reqwest::Method::DELETE, T1, &path)
        .bearer_auth(&bob)
        .send()
        .await
        .unwrap();
    problem(r, StatusCode::NOT_FOUND).await;

    let r = app
        .request(reqwest::Method::PUT, T1, &path)
        .bearer_auth(&alice)
        .json(&json!({"content": "edited"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.json::<Value>().await.unwrap()["content"], "edited");
    let r = app
        .request(reqwest::Method::PUT, T1, &path)
        .bearer_auth(&alice)
        .json(&json!({"content": "   "}))
        .send()
        .await
        .unwrap();
    problem(r, StatusCode::UNPROCESSABLE_ENTITY).await;
    let r = app
        .request(reqwest::Method::DELETE, T1, &path)
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    problem(
        app.get(T1, &path, Some(&alice)).await,
        StatusCode::NOT_FOUND,
    )
    .await;
}
