//! The endpoints of one stored response, by its id: `GET /v1/responses/{id}`, `DELETE
//! /v1/responses/{id}` and `GET /v1/responses/{id}/input_items`, each the caller's tenant's
//! only (another's is 404, as an unknown id).

use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use serde_json::{Value, json};

use super::store::Stored;
use super::{answer_error, bad};
use crate::Shared;
use crate::error::RouterError;
use crate::http::{json_response, tenant};

/// `GET /v1/responses/{id}`: a stored response of the caller's.
pub(in crate::http) async fn retrieve(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    answer(stored(&shared, &headers, id).await.map(|stored| stored.response.clone()))
}

/// `GET /v1/responses/{id}/input_items`: the items of a stored response's own `input`, as
/// OpenAI lists them: `order` `desc` (the default) or `asc`, `limit` 1..=100 (20), `after`
/// an item id.
pub(in crate::http) async fn input_items(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    page: Result<Query<Page>, QueryRejection>,
) -> Response {
    answer(stored(&shared, &headers, id).await.and_then(|stored| {
        let Query(page) = page.map_err(|rejection| bad("query", rejection.body_text()))?;
        page.of(stored.input_items())
    }))
}

/// `DELETE /v1/responses/{id}`: forgets a stored response of the caller's.
pub(in crate::http) async fn delete(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let deleted = match tenant(&shared.auth, &headers) {
        Ok(tenant) => shared.responses.delete(&tenant, &id).await,
        Err(err) => Err(err),
    };
    answer(deleted.and_then(|deleted| match deleted {
        true => Ok(json!({ "id": id, "object": "response", "deleted": true })),
        false => Err(RouterError::UnknownResponse { id, param: None }),
    }))
}

/// The caller's stored response `id`.
async fn stored(shared: &Shared, headers: &HeaderMap, id: String) -> Result<Arc<Stored>, RouterError> {
    let tenant = tenant(&shared.auth, headers)?;
    shared.responses.get(&tenant, &id).await?.ok_or(RouterError::UnknownResponse { id, param: None })
}

/// A JSON body, or the error's.
fn answer(result: Result<Value, RouterError>) -> Response {
    match result {
        Ok(body) => json_response(200, body),
        Err(err) => answer_error(&err),
    }
}

/// A page of a list endpoint's query.
#[derive(Debug, serde::Deserialize)]
pub(in crate::http) struct Page {
    after: Option<String>,
    limit: Option<usize>,
    order: Option<String>,
}

impl Page {
    /// `items` (oldest first) paged as an OpenAI `list` object.
    fn of(&self, items: &[Value]) -> Result<Value, RouterError> {
        let limit = self.limit.unwrap_or(20);
        if !(1..=100).contains(&limit) {
            return Err(bad("limit", "limit: must be in 1..=100"));
        }
        let mut ordered: Vec<&Value> = match self.order.as_deref() {
            None | Some("desc") => items.iter().rev().collect(),
            Some("asc") => items.iter().collect(),
            Some(_) => return Err(bad("order", "order: must be asc or desc")),
        };
        if let Some(after) = &self.after {
            let Some(at) = ordered.iter().position(|item| item["id"] == after.as_str()) else {
                return Err(bad("after", format!("after: no input item has id {after:?}")));
            };
            ordered.drain(..=at);
        }
        let has_more = ordered.len() > limit;
        ordered.truncate(limit);
        let id = |item: Option<&&Value>| item.map_or(Value::Null, |item| item["id"].clone());
        Ok(json!({
            "object": "list",
            "data": ordered,
            "first_id": id(ordered.first()),
            "last_id": id(ordered.last()),
            "has_more": has_more,
        }))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    #[test]
    fn input_items_are_paged_as_openai_lists_them() {
        let items: Vec<Value> = (1..=5).map(|i| json!({"id": format!("msg_{i}")})).collect();
        let page = |after: Option<&str>, limit, order: Option<&str>| {
            let page = Page { after: after.map(str::to_owned), limit, order: order.map(str::to_owned) };
            page.of(&items).map(|list| {
                let ids: Vec<String> =
                    list["data"].as_array().into_iter().flatten().map(|i| i["id"].to_string()).collect();
                (ids.join(" "), list["has_more"].clone(), list["first_id"].clone(), list["last_id"].clone())
            })
        };
        let (ids, more, first, last) = page(None, None, None).expect("a page");
        assert_eq!(
            (ids.as_str(), more, first, last),
            (r#""msg_5" "msg_4" "msg_3" "msg_2" "msg_1""#, json!(false), json!("msg_5"), json!("msg_1"))
        );
        let (ids, more, ..) = page(Some("msg_2"), Some(2), Some("asc")).expect("a page");
        assert_eq!((ids.as_str(), more), (r#""msg_3" "msg_4""#, json!(true)));
        let (ids, more, first, _) = page(Some("msg_1"), None, None).expect("the end");
        assert_eq!((ids.as_str(), more, first), ("", json!(false), Value::Null));
        for (after, limit, order, field) in
            [(Some("msg_9"), None, None, "after"), (None, Some(0), None, "limit"), (None, None, Some("up"), "order")]
        {
            match page(after, limit, order) {
                Err(RouterError::BadBody { param, .. }) => assert_eq!(param.as_deref(), Some(field)),
                other => panic!("{field} was not refused: {other:?}"),
            }
        }
    }
}
