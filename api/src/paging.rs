//! Keyset paging, the same on every list: `limit` (1 to `MAX`, default 100) and `after` (the previous page's
//! `next`), parsed by [`List`] (422 `invalid_field` naming `limit` or `after` when they are not valid), and a page
//! of answers, [`Page`], built from the `limit + 1` rows a list reads ([`Page::from_rows`]).

use actix_web::dev::Payload;
use actix_web::{FromRequest, HttpRequest};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::extract::{query_as, query_pairs};
use crate::Problem;

/// Page size when the caller names none.
pub const DEFAULT_LIMIT: i64 = 100;
/// The largest page of most lists (the audit API's is 1,000).
pub const MAX_LIMIT: i64 = 500;

/// What a list's `after` decodes to: the key of the last item of the previous page.
pub trait PageCursor: Sized {
    /// What the caller is told when `after` does not decode.
    const HINT: &'static str = "after takes the next value of the previous page";

    /// The cursor `raw` names, or `None` when it names none.
    fn decode(raw: &str) -> Option<Self>;
}

/// Any text: the list compares it with its keys (members by address, trust rules by id).
impl PageCursor for String {
    fn decode(raw: &str) -> Option<Self> {
        Some(raw.to_string())
    }
}

/// The opaque cursor of a (time, id) list, made by [`crate::encode_page_key`].
impl PageCursor for projections::TimeKey {
    fn decode(raw: &str) -> Option<Self> {
        crate::decode_page_key(raw).ok()
    }
}

/// A list's `limit` and decoded `after` (empty values count as absent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paging<C = String, const MAX: i64 = MAX_LIMIT> {
    /// Where the page starts: after this key (`None`: at the start).
    pub after: Option<C>,
    /// The most items the page holds, 1 to `MAX`.
    pub limit: i64,
}

impl<C: PageCursor, const MAX: i64> Paging<C, MAX> {
    /// Parses `after` and `limit` as a query string carries them.
    pub fn parse(after: Option<&str>, limit: Option<&str>) -> Result<Self, Problem> {
        let limit = match limit {
            None => DEFAULT_LIMIT,
            Some(raw) => raw
                .parse::<i64>()
                .ok()
                .filter(|limit| (1..=MAX).contains(limit))
                .ok_or_else(|| Problem::invalid_field("limit", format!("limit is between 1 and {MAX}")))?,
        };
        let after = match after.filter(|raw| !raw.is_empty()) {
            None => None,
            Some(raw) => Some(C::decode(raw).ok_or_else(|| Problem::invalid_field("after", C::HINT))?),
        };
        Ok(Self { after, limit })
    }

    /// How many rows to read: one more than the page holds, to learn whether another page follows.
    pub fn fetch(&self) -> i64 {
        self.limit.saturating_add(1)
    }

    /// [`Paging::fetch`] as a `usize`.
    pub fn fetch_usize(&self) -> usize {
        usize::try_from(self.fetch()).unwrap_or(usize::MAX)
    }
}

/// A list without filters: only `after` and `limit` (anything else is 400 `invalid_request`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoFilters {}

/// The query of a list: its filters `F` (deserialized from every parameter but `after` and `limit`, with the
/// checks of [`crate::extract::Query`]) and its [`Paging`].
#[derive(Debug)]
pub struct List<F = NoFilters, C = String, const MAX: i64 = MAX_LIMIT> {
    /// The list's own filters.
    pub filters: F,
    /// Where the page starts and how long it is.
    pub page: Paging<C, MAX>,
}

impl<F: DeserializeOwned, C: PageCursor, const MAX: i64> List<F, C, MAX> {
    fn parse(request: &HttpRequest) -> Result<Self, Problem> {
        let mut pairs = query_pairs(request)?;
        let after = take(&mut pairs, "after")?;
        let limit = take(&mut pairs, "limit")?;
        let page = Paging::parse(after.as_deref(), limit.as_deref())?;
        Ok(Self { filters: query_as(&pairs)?, page })
    }
}

/// Removes the parameter `name` from `pairs`, returning its value; 400 when it is repeated.
fn take(pairs: &mut Vec<(String, String)>, name: &str) -> Result<Option<String>, Problem> {
    let mut found = None;
    let mut repeated = false;
    pairs.retain(|(key, value)| {
        if key != name {
            return true;
        }
        repeated |= found.replace(value.clone()).is_some();
        false
    });
    if repeated {
        return Err(Problem::invalid_request("Invalid query string", format!("duplicate field `{name}`")));
    }
    Ok(found)
}

impl<F: DeserializeOwned, C: PageCursor, const MAX: i64> FromRequest for List<F, C, MAX> {
    type Error = actix_web::Error;
    type Future = std::future::Ready<Result<Self, Self::Error>>;

    fn from_request(request: &HttpRequest, _: &mut Payload) -> Self::Future {
        std::future::ready(Self::parse(request).map_err(Into::into))
    }
}

/// The paging parameters, as the OpenAPI document shows them (lists of up to 500).
#[derive(Debug, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageParams {
    /// The `next` value of the previous page.
    pub after: Option<String>,
    /// Page size, 1 to 500 (default 100).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<u32>,
}

/// A page of a list: `items` in the list's order, and `next`, which `after` takes for the page after it (absent on
/// the last page).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Page<T> {
    /// The items, in the list's order.
    pub items: Vec<T>,
    /// Pass as `after` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

impl<T> Page<T> {
    /// The page of `rows`, read with `limit + 1` ([`Paging::fetch`]): the first `limit` become items, and when there
    /// were more, `next` is the cursor of the last item kept.
    pub fn from_rows<R>(
        mut rows: Vec<R>,
        limit: i64,
        cursor: impl FnOnce(&R) -> String,
        item: impl FnMut(R) -> T,
    ) -> Self {
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        let next = if rows.len() > limit {
            rows.truncate(limit);
            rows.last().map(cursor)
        } else {
            None
        };
        Page { items: rows.into_iter().map(item).collect(), next }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn limits_default_and_are_bounded() {
        assert_eq!(Paging::<String>::parse(None, None).unwrap().limit, 100);
        assert_eq!(Paging::<String>::parse(None, Some("500")).unwrap().limit, 500);
        assert_eq!(Paging::<String, 1000>::parse(None, Some("1000")).unwrap().limit, 1000);
        for bad in ["", "0", "501", "-1", "many", "1.5", "99999999999999999999"] {
            let problem = Paging::<String>::parse(None, Some(bad)).unwrap_err();
            assert_eq!((problem.status().as_u16(), problem.field_name()), (422, Some("limit")), "{bad}");
        }
    }

    #[test]
    fn cursors_that_do_not_decode_name_after() {
        let problem = Paging::<projections::TimeKey>::parse(Some("%%%"), None).unwrap_err();
        assert_eq!((problem.status().as_u16(), problem.field_name()), (422, Some("after")));
        let key = crate::encode_page_key("2026-01-01T00:00:00.000000Z", "x");
        assert_eq!(Paging::<projections::TimeKey>::parse(Some(&key), None).unwrap().after.unwrap().id, "x");
        assert_eq!(Paging::<String>::parse(Some(""), None).unwrap().after, None);
    }

    #[test]
    fn a_page_is_the_first_limit_rows_and_the_cursor_of_the_last() {
        let page = Page::from_rows(vec![1, 2, 3], 2, |row| row.to_string(), |row| row * 10);
        assert_eq!((page.items, page.next), (vec![10, 20], Some("2".to_string())));
        let page = Page::from_rows(vec![1, 2], 2, |row| row.to_string(), |row| row * 10);
        assert_eq!((page.items, page.next), (vec![10, 20], None));
        let json = serde_json::to_value(Page::<u8> { items: vec![], next: None }).unwrap();
        assert_eq!(json, serde_json::json!({"items": []}));
    }
}
